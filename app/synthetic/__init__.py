"""Synthetic data: the HU phantom and everything drawn from it, with its ground truth.

- :mod:`app.synthetic.anatomy`: the chest and upper abdomen in Hounsfield units, lesions,
  axial CT slices with each lesion's pixel box;
- :mod:`app.synthetic.xray`: the frontal radiograph projection of the same phantom;
- :mod:`app.synthetic.truth`: the one ground-truth record of a lesion
  (:class:`~app.synthetic.truth.LesionTruth`, ``to_dict``/``from_dict``), sizes classed by
  :func:`inference.evaluation.sizes.size_bucket`;
- :mod:`app.synthetic.cases`: the 2-D cases of the training corpus (:func:`make_case`,
  :class:`CorpusConfig`), written out by :mod:`training.phantoms`;
- :mod:`app.synthetic.sample`: the DICOM CT study of ``xmedgpt sample`` and its
  ``ground_truth.json``.
"""
