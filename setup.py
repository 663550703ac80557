"""Packaging metadata (pyproject.toml names the build backend).

The distribution is ``django-mysql-autopool`` (PyPI's ``autopool`` is an unrelated project);
the import name is ``autopool``.
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "autopool" / "__init__.py").read_text()).group(1)

setup(
    name="django-mysql-autopool",
    version=VERSION,
    description="SQLAlchemy connection pools for Django's stock MySQL backend, gevent-friendly",
    long_description=(HERE / "README.rst").read_text(encoding="utf-8"),
    long_description_content_type="text/x-rst",
    author="autopool developers",
    license="MIT",
    # Placeholder: the repository has no public remote yet; replace with the real address.
    url="https://github.com/autopool/django-mysql-autopool",
    project_urls={
        "Documentation": "https://github.com/autopool/django-mysql-autopool#readme",
        "Source": "https://github.com/autopool/django-mysql-autopool",
        "Changelog": "https://github.com/autopool/django-mysql-autopool/blob/main/CHANGELOG.rst",
        "Issues": "https://github.com/autopool/django-mysql-autopool/issues",
    },
    keywords="django mysql mariadb connection pool sqlalchemy gevent asgi",
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
            # The ASGI servers tests/test_asgi.py starts. uWSGI (compiled from source) and Celery
            # are in requirements-test.txt; their tests skip without them.
            "uvicorn>=0.30",
            "daphne>=4.1",
        ],
    },
    classifiers=[
        "Development Status :: 4 - Beta",
        "Framework :: Django",
        "Framework :: Django :: 4.2",
        "Framework :: Django :: 5.2",
        "Framework :: Django :: 6.0",
        "Framework :: AsyncIO",
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
