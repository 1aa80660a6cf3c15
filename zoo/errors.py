"""Exception types raised by the zoo.

Every error a user can cause (a bad input file, a missing modality, an unknown entry, a bad
weights file) raises a subclass of :class:`ZooError`. Messages name the offending file or
value, what was found, what was expected and what to do about it. The CLI prints the message
as one line and exits non-zero; the Python API lets the exception propagate.
"""

from __future__ import annotations


class ZooError(Exception):
    """Base class of every error raised on purpose by the zoo."""


# --- inputs ------------------------------------------------------------------------------
class InputError(ZooError, ValueError):
    """An input image (file, array or image object) cannot be used as given."""


class InputNotFoundError(InputError, FileNotFoundError):
    """An input path does not exist."""


class UnreadableImageError(InputError):
    """A file exists but is empty, truncated or not an image format we can read."""


class DimensionError(InputError):
    """An image has the wrong number of dimensions (e.g. 2D or 4D where 3D is expected)."""


class NonFiniteError(InputError):
    """An image contains NaN or infinite voxel values."""


class ConstantImageError(InputError):
    """An image (or its brain mask) is constant, so it cannot be normalised."""


class NoHeadError(InputError):
    """A volume that should show a head (``skull_stripping``) has no foreground, or the brain
    mask found in it is empty or implausibly small."""


class GeometryError(InputError):
    """Voxel spacing or orientation is unusable: zero/negative spacing, non-orthogonal affine."""


class GridMismatchError(InputError):
    """Two inputs that must share a voxel grid (e.g. FLAIR and T1) do not."""


class MissingModalityError(InputError, LookupError):
    """A modality the model variant needs was not given, or an unknown one was given."""


class VolumeTooLargeError(InputError, MemoryError):
    """An input is larger than the configured memory budget."""


class NotHounsfieldError(InputError):
    """A CT image's intensities cannot be Hounsfield units (e.g. already normalised) and the
    caller did not declare it normalised."""


# --- registry, cards, weights ------------------------------------------------------------
class UnknownEntryError(ZooError, LookupError):
    """No entry of that name is registered."""

    def __str__(self) -> str:  # LookupError would quote the message like a key
        return str(self.args[0]) if self.args else ""


class UnknownVariantError(UnknownEntryError):
    """The entry has no variant of that name."""


class CardError(ZooError):
    """A model card file is missing, is not valid YAML or fails its JSON schema."""


class WeightsError(ZooError):
    """Weights cannot be resolved, downloaded, verified or loaded."""


class WeightsNotAvailableError(WeightsError):
    """No weights file was found in any source (explicit path, cache, bundled folder, URLs)."""


class ChecksumError(WeightsError):
    """A weights (or sample) file's sha256 differs from the one stated in the card."""


class ConversionError(WeightsError):
    """Upstream weights (a Keras 2 ``.h5``, a MONAI state_dict) do not fit the zoo architecture:
    the message names the upstream layer/weight and the model variable, with both shapes.
    Nothing is written when a conversion fails."""


class UpstreamHashChangedError(ChecksumError):
    """An authors' upstream weights file differs (sha256) from the one recorded when it was
    first downloaded: the published file changed, or another file was given."""


class UpstreamExtractionRequiredError(WeightsNotAvailableError):
    """The authors' published files are not something the zoo downloads or reads (the spine's
    fastai learner pickles, which it never unpickles): the message gives the one-off extraction
    commands to run elsewhere and the ``zoo fetch ... --upstream --from-dir`` that follows."""


class ProfileMismatchError(WeightsError):
    """Weights were combined with a preprocessing profile they do not belong to (e.g. the
    authors' upstream weights with the zoo's own profile); the card names which profile
    belongs to which weights."""


class OptionMismatchError(WeightsError):
    """Weights were combined with card options that change the network's input (e.g. the
    ``lung_nodule`` input frame: ``pad_shape``, ``downsample``) other than the ones they were
    trained with (their card record's or run record's ``trained_options``)."""


class DownloadError(WeightsError):
    """A download failed (network, HTTP status, interrupted transfer)."""


# --- sample scans --------------------------------------------------------------------------
class SampleError(ZooError):
    """A public sample scan (:mod:`zoo.samples`) cannot be provided."""


class SampleNotFoundError(SampleError, KeyError):
    """No sample (or no file of a sample) has that name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class SampleNotAvailableError(SampleError):
    """A sample file is in no mirror and could not be downloaded (offline machine)."""


# --- outputs and metrics -------------------------------------------------------------------
class OutputError(ZooError):
    """An output cannot be written (it would overwrite an input, or the folder is unusable)."""


class MetricError(ZooError, ValueError):
    """Metric inputs are inconsistent (different grids, values outside the allowed range)."""


class RecipeError(ZooError):
    """A training recipe is missing or fails its schema."""


# --- inference backends --------------------------------------------------------------------
class BackendError(ZooError):
    """An inference backend is unknown, its optional packages are not installed, or a model
    cannot be converted to it (e.g. ONNX export)."""


class MissingDependencyError(ZooError, ImportError):
    """An optional package a feature needs is not installed (e.g. pybids for ``--bids``)."""
