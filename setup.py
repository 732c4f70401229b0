from setuptools import find_packages, setup

setup(
    name="frtm-plugin",
    version="0.1.0",
    description="FRTM video object segmentation for FiftyOne",
    packages=find_packages(include=["frtm_plugin", "frtm_plugin.*"]),
    package_data={"frtm_plugin": ["weights/*.pth", "weights/*.md"]},
    python_requires=">=3.10",
    install_requires=["torch", "torchvision", "numpy", "opencv-python-headless", "pillow", "tqdm"],
    entry_points={"console_scripts": ["frtm-vos=frtm_plugin.cli:main"]},
)
