"""The detector registry: method keys to detector classes, with no imports of its own.

Detectors register here (:mod:`eelsanom.detectors` registers the built-in ones, each as a
loader that imports its module only when asked, so no torch is imported for PCA);
:mod:`eelsanom.modelfile` looks a model file's detector up here. Because this module
imports nothing, the model file never imports the detectors package, and the package may
import the model file: no import cycle (issue 21, item 4).

Each detector class carries the validator of its own model files, the classmethod
``validate_model_file``; :func:`model_validator` returns it, and refuses a class that does
not define one itself (inheriting a parent's is not enough: a subclass may save more, or
other, state than its parent's validator knows).
"""


class UnknownDetector(LookupError):
    """No detector is registered under the key."""


class NoValidator(LookupError):
    """The detector class defines no model-file validator of its own."""


_LOADERS = {}

#: Method keys with their display names, in the order front ends list them (the one table:
#: :data:`eelsanom.detectors.params.METHODS` is this dict; here so that modules below the
#: detectors, such as :mod:`eelsanom.cautions`, can name a detector without importing them)
METHODS = {"cvae": "3D-CVAE", "pca": "PCA", "context-pca": "context PCA",
           "bulk-context": "bulk + context PCA", "rx": "RX"}


def key(name):
    """The registry key of a method name: lower case, ``-`` and ``3d`` ignored
    (``"CVAE-3D"`` -> ``"cvae"``, ``"context-pca"`` -> ``"contextpca"``)."""
    return str(name).lower().replace("-", "").replace("3d", "")


def register(name, loader):
    """Register ``loader()`` (returns the detector class) under the key of ``name``."""
    _LOADERS[key(name)] = loader


def registered():
    """The registered keys, sorted."""
    return sorted(_LOADERS)


def detector_class(name):
    """The detector class registered under ``name``.

    Raises
    ------
    UnknownDetector
        When nothing is registered under ``name``'s key.
    """
    k = key(name)
    if k not in _LOADERS:
        raise UnknownDetector(f"unknown method {name!r}; expected one of {registered()}.")
    return _LOADERS[k]()


def model_validator(cls):
    """The model-file validator of detector class ``cls``: its own ``validate_model_file``.

    Raises
    ------
    NoValidator
        When ``cls`` does not define ``validate_model_file`` in its own class body.
    """
    if "validate_model_file" not in vars(cls):
        raise NoValidator(f"{cls.__name__} defines no model-file validator "
                          "(validate_model_file), so its model files cannot be checked")
    return cls.validate_model_file
