"""Bort: optimal subarchitecture extraction, distillation pretraining and Agora fine-tuning."""
from setuptools import find_packages, setup


def _requirements(path):
    with open(path) as f:
        return [line.split('#')[0].strip() for line in f if line.split('#')[0].strip()]


setup(
    name='bort',
    version='0.1.0',
    description='Optimal subarchitecture extraction for BERT (Bort): FPTAS search, knowledge-'
                'distillation pretraining and Agora fine-tuning on MXNet/GluonNLP',
    packages=find_packages(include=['bort', 'bort.*']),
    # C++ source of the fused operators, compiled on first use (bort/inference/kernels.py).
    package_data={'bort.inference': ['csrc/*.cc']},
    python_requires='>=3.8,<3.12',
    install_requires=_requirements('requirements.txt'),
    extras_require={
        'hf': _requirements('requirements-hf.txt'),
        # Built from source against MXNet; see scripts/setup.sh for the flags.
        'horovod': ['horovod==0.28.1'],
    },
)
