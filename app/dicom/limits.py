"""Every limit the DICOM engine puts on what one input may cost, in one place.

A study arrives from CDs, USB sticks, PACS exports and e-mail; one file in it may be
damaged or built to hurt (issue #19). Each limit below turns such a file into a one-line
problem for that file (``FileProblem``: "skipped", "damaged", "too large") while its
siblings still open. None of them is reached by a well-formed study; raising one is safe
for memory and time only while the others still hold.

Where each is enforced:

- ``sources.py``: regular files only (FIFOs, devices, sockets are skipped, never opened);
  DICOMDIR references confined to the DICOMDIR's folder; zip member count, declared and
  streamed sizes, compression ratio, free disk space — checked before anything is unpacked.
- ``rawheader.py`` / ``header.py``: header bytes read per file, sequence nesting depth,
  zero-filled headers, the first bytes of a file without the ``DICM`` marker, the decoded
  size of one instance, a deflated data set's inflated size and ratio (streamed, before
  pydicom inflates it in memory), compressed frames whose own size disagrees with the header.
- ``loader.py``: the same codestream check for every frame, just before a native decoder
  (CharLS, OpenJPEG, libjpeg) is handed the bytes; GDCM, which aborts the process on
  headers it finds inconsistent, is only used for a syntax no other plugin decodes.
"""

from __future__ import annotations

# ---------------------------------------------------------------- one file's header

#: Bytes of one file read to find its pixel data. Enhanced multi-frame headers with
#: per-frame functional groups reach a few MiB; past this the file is refused.
MAX_HEADER_BYTES = 64 * 1024**2

#: Sequences nested deeper than this (real files: under 10) mark the file as damaged.
#: Parsers never recurse on file structure past this depth (Python's own limit is ~1000).
MAX_SEQUENCE_DEPTH = 64

#: Consecutive all-zero element headers the general (pydicom) reader may meet before the
#: file is called zero-filled (32 KiB of zeros where elements should be; real headers: none).
MAX_ZERO_ELEMENTS = 4096

# ---------------------------------------------------------------- pixel budget

#: One instance larger than this once decoded (rows × columns × samples × frames × bytes)
#: is refused instead of exhausting memory.
MAX_INSTANCE_BYTES = 4 * 1024**3

#: Bytes of a compressed frame's first fragment the scan reads to find the codestream's
#: own size (JPEG SOF, JPEG-LS SOF55, JPEG 2000 SIZ). The loader checks whole frames.
CODESTREAM_HEAD_BYTES = 64 * 1024

# ---------------------------------------------------------------- zip archives

#: Refuse to unpack archives whose members add up to more than this.
MAX_ZIP_BYTES = 32 * 1024**3

#: Refuse archives holding more files than this (a large study has ~10 000).
MAX_ZIP_MEMBERS = 200_000

#: Refuse any single member declaring more than this (the largest instance plus its header).
MAX_ZIP_MEMBER_BYTES = MAX_INSTANCE_BYTES + MAX_HEADER_BYTES

#: Refuse zip members (and deflated data sets) that unpack to more than this many times their
#: compressed size (DICOM images deflate 2–10×; a zip bomb ~1000×) ...
MAX_ZIP_RATIO = 100

#: ... when they unpack to at least this much (small files such as blank slices or text
#: may compress far better without costing anything).
ZIP_RATIO_MIN_BYTES = 16 * 1024**2

#: Space left free on the cache's disk after unpacking.
ZIP_FREE_DISK_MARGIN = 1024**3

#: Unpacked archives not opened for this many days are deleted.
ZIP_CACHE_DAYS = 7
