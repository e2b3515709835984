from setuptools import find_namespace_packages, setup

setup(
    name="cadpipe",
    version="0.1.0",
    description="MONAI-based computer-aided-diagnosis pipelines: bundles, transforms, batch scoring",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",  # the version the suite runs on
    # namespace packages: the portal's static/ and templates/ folders are data-only packages, declared as such
    packages=find_namespace_packages(include=["cadpipe", "cadpipe.*"], exclude=["*.__pycache__"]),
    include_package_data=True,
    package_data={
        "cadpipe": ["metadata_schema.json"],
        "cadpipe.pipelines.portal.static": ["*.css", "*.js"],
        "cadpipe.pipelines.portal.templates": ["*.html"],
    },
    install_requires=[
        "monai==1.6.1",
        "torch>=2.3",
        "pytorch-ignite>=0.5",
        "numpy>=1.24",
        "pydicom>=3.0",
        "pylibjpeg>=2.0",
        "pylibjpeg-libjpeg>=2.1",
        "pylibjpeg-openjpeg>=2.3",
        "pylibjpeg-rle>=2.0",
        "imagecodecs>=2024.1.1",
        "itk>=5.3",
        "nibabel>=5.0",
        "scikit-image>=0.22",
        "scipy>=1.10",
        "pandas>=2.0",
        "pillow>=10.0",
        "highdicom>=0.22",
        "tqdm>=4.60",
        "tensorboard>=2.14",
        "einops>=0.7",
        "fire>=0.5",  # python -m monai.bundle run ...
    ],
    extras_require={
        "dev": [
            "pytest>=8",
            "pytest-xdist>=3",
            "pytest-timeout>=2",
            "opencv-python-headless>=4.8",
            "triton>=3.0; platform_system == 'Linux'",  # CLAHE's Triton kernels, tested on the CPU in its interpreter
            "pyarrow>=14",
            "jsonschema>=4",  # monai.bundle verify_metadata
            "httpx>=0.27", "selenium>=4.15",  # portal: FastAPI TestClient; browser test drives Debian's chromium
            "pydicom-data>=1.0",  # pydicom's larger real test files (RG1/RG3 CR, MR2, 693 CT...): 34 MB wheel
        ],
        "ray": ["ray[data]>=2.9"],  # cadpipe score --ray: Ray Data (pandas, pyarrow) on a Ray cluster
        "serve": ["fastapi>=0.110", "uvicorn>=0.27", "python-multipart>=0.0.9", "swagger-ui-bundle>=1.1", "reportlab[accel]>=4.0"],
        "pacs": ["pynetdicom>=2.1", "requests>=2.31"],  # cadpipe listen, cadpipe score --dicomweb
        "mlflow": ["mlflow-skinny>=2.10", "sqlalchemy>=2.0", "alembic>=1.10"],  # MONAI --tracking mlflow: SQLite store
    },
    entry_points={"console_scripts": ["cadpipe=cadpipe.cli:main"]},
)
