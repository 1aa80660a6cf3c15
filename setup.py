"""Install the zoo. ``cards/``, ``training/`` and ``weights/`` sit at the top of the repository
but are installed inside the ``zoo`` namespace (``zoo.cards``, ``zoo.training``,
``zoo.bundled_weights``) so that ``pip install`` claims no generic top-level names."""

from setuptools import setup

setup(
    name="zoo",
    version="0.1.0",
    description="Keras 3 model zoo for medical imaging (WMH, claustrum, spine, lung nodule, DiamondGAN)",
    python_requires=">=3.10",
    packages=[
        "zoo", "zoo.preprocessing", "zoo.inference", "zoo.architectures", "zoo.entries", "zoo.converters",
        "zoo.cards", "zoo.training", "zoo.training.tasks", "zoo.bundled_weights",
    ],
    package_dir={"zoo.cards": "cards", "zoo.training": "training", "zoo.bundled_weights": "weights"},
    package_data={
        "zoo": ["sample_files.csv"],
        "zoo.cards": ["*.yaml", "*.json"],
        "zoo.training": ["recipes/*.yaml", "*.json", "task_schemas/*.json"],
        "zoo.bundled_weights": ["*/*/*.npz"],
    },
    install_requires=[
        "tensorflow>=2.20",
        "keras>=3.10",
        "nibabel>=5.2",
        "SimpleITK>=2.3",
        "numpy>=1.26",
        "scipy>=1.11",
        "pandas>=2.0",
        "pyyaml>=6.0",
        "jsonschema>=4.20",
        "h5py>=3.10",
        "tqdm>=4.66",
        "tensorboard>=2.20",
    ],
    extras_require={"test": ["pytest>=8", "pillow>=10"], "viz": ["pillow>=10"],
                    "onnx": ["tf2onnx>=1.17", "onnxruntime>=1.17"],
                    "lidc": ["pylidc>=0.2.3"], "torch": ["torch>=2.1"], "safetensors": ["safetensors>=0.4"]},
    entry_points={"console_scripts": ["zoo=zoo.cli:main"]},
)
