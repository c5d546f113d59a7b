"""DICOM study engine: header scan, series grouping and sorting, pixel decoding,
modality/VOI LUTs, windowing and geometry. Qt-free."""
