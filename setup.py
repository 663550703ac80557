"""Packaging metadata for autopool (pyproject.toml names the build backend)."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "autopool" / "__init__.py").read_text()).group(1)

setup(
    name="autopool",
    version=VERSION,
    description="SQLAlchemy connection pools for Django's stock MySQL backend, gevent-friendly",
    long_description=(HERE / "README.rst").read_text(encoding="utf-8"),
    long_description_content_type="text/x-rst",
    author="autopool developers",
    license="MIT",
    packages=find_packages(include=["autopool", "autopool.*"]),
    package_data={"autopool": ["py.typed"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=[
        "Django>=4.2,<6.2",
        "SQLAlchemy>=2.0,<2.2",
        "wrapt>=1.14",
    ],
    extras_require={
        "mysqlclient": ["mysqlclient>=2.1"],
        "pymysql": ["PyMySQL>=1.1"],
        "gevent": ["gevent>=24.2"],
        "prometheus": ["prometheus_client>=0.17"],
        "test": [
            "pytest>=7",
            "mysqlclient>=2.1",
            "PyMySQL>=1.1",
            "gevent>=24.2",
            "gunicorn>=22",
            "prometheus_client>=0.17",
        ],
    },
    classifiers=[
        "Development Status :: 4 - Beta",
        "Framework :: Django",
        "Framework :: Django :: 4.2",
        "Framework :: Django :: 5.2",
        "Framework :: Django :: 6.0",
        "Intended Audience :: Developers",
        "License :: OSI Approved :: MIT License",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Database",
    ],
)
