"""Packaging for dnallm_nb, driven by settings.ini (nbdev's layout, without pkg_resources)."""
from configparser import ConfigParser

import setuptools

config = ConfigParser(delimiters=["="])
config.read("settings.ini", encoding="utf-8")
cfg = config["DEFAULT"]


def requirement_list(key: str) -> list:
    "Space-separated requirements from settings.ini (empty when the key is absent)."
    return cfg.get(key, "").split()


setuptools.setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    author=cfg["author"],
    author_email=cfg["author_email"],
    url=cfg["git_url"],
    license="Apache-2.0",
    keywords=cfg["keywords"].split(),
    python_requires=f">={cfg['min_python']}",
    packages=setuptools.find_packages(include=[cfg["lib_name"], f"{cfg['lib_name']}.*"]),
    include_package_data=True,
    package_data={cfg["lib_name"]: ["assets/**/*", "csrc/*"]},  # csrc: the C++ kernels, compiled on first use
    install_requires=requirement_list("requirements"),
    extras_require={"dev": requirement_list("dev_requirements"), "cuda": requirement_list("cuda_requirements")},
    entry_points={"console_scripts": cfg["console_scripts"].split(), "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Intended Audience :: Science/Research",
        "Topic :: Scientific/Engineering :: Bio-Informatics",
    ],
    zip_safe=False,
)
