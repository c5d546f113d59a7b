"""Application core of XMedGPT Workstation, Qt-free.

DICOM study model, pixel pipeline, assistant orchestration, report model,
export, audit, settings and the headless command line. Never imports Qt or ui/.
"""
