"""The local study database and DICOM networking (Qt-free).

- :mod:`app.studies.db`: SQLite index of every study the workstation has opened, imported or
  received (search, states, where the files are).
- :mod:`app.studies.importer`: import a folder in place or copied into managed storage.
- :mod:`app.studies.nodes`: the remote DICOM nodes (PACS) and the local listener's identity.
- :mod:`app.studies.storage`: writing received instances (fsync, duplicates, disk full).
- :mod:`app.studies.scp` / :mod:`app.studies.scu`: pynetdicom Storage SCP (``xmedgpt listen``) and
  the echo/find/get/move/send client.

This package sits beside the other features, below ``app.report``: the audit trail is passed
in by the caller (anything with ``append(action, data, study_uid=...)``, i.e.
``app.report.audit.AuditLog``).
"""
