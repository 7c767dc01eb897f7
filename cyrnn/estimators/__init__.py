"""scikit-learn estimators on recurrent networks.

``LSTMRegressor``, ``GRURegressor``, ``SimpleRNNRegressor``, ``LSTMClassifier``,
``GRUClassifier`` and ``SimpleRNNClassifier`` are thin subclasses of
:class:`~cyrnn.estimators.base.BaseSequenceModel`, which holds the input
handling (3-D arrays, 2-D tables, ragged lists batched by length), the
training loop and persistence.
"""

from ..persistence import register_loader
from .base import BaseSequenceModel
from .classifiers import GRUClassifier, LSTMClassifier, SimpleRNNClassifier
from .regressors import GRURegressor, LSTMRegressor, SimpleRNNRegressor

ESTIMATORS = (LSTMRegressor, GRURegressor, SimpleRNNRegressor,
              LSTMClassifier, GRUClassifier, SimpleRNNClassifier)

for _cls in ESTIMATORS:
    register_loader(f"cyrnn.{_cls.__name__}", _cls._from_archive)
del _cls

__all__ = ["BaseSequenceModel", "LSTMRegressor", "GRURegressor", "SimpleRNNRegressor",
           "LSTMClassifier", "GRUClassifier", "SimpleRNNClassifier", "ESTIMATORS"]
