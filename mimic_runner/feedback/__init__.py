"""Human feedback on the attention of an attention-branch model (Adhikari et al., TNO).

An expert inspects an image, the prediction and the attention map M(x), and draws regions of
interest ("look here" / "not here"); the model is retrained with the corrected map in its loss;
the differences are shown and the new version is accepted or rolled back. Pieces: :mod:`.roi`
(pure math), :mod:`.store` (SQLite), :mod:`.session` (a run's workspace), :mod:`.retrain`,
:mod:`.diff`, :mod:`.app` (FastAPI and ``static/``), :mod:`.runs`; CLI ``mimic-feedback``.
"""
