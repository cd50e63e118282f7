"""dlc: a declarative model-spec compiler and runtime.  See dlc.api for the Python API."""
__version__ = "0.1.0"

from .api import CompiledSpec, build, compile_spec, load_run, train  # noqa: E402

__all__ = ["CompiledSpec", "build", "compile_spec", "load_run", "train", "__version__"]
