"""Package discovery (everything else is in pyproject.toml).

models/, tui/ and lsp/ sit at the top of the repository and install as localspec.models, localspec.tui and
localspec.lsp. pyproject.toml's `find` cannot rename folders, so the subpackages are found here: a new
subpackage ships without anyone listing it.
"""

from setuptools import find_packages, setup

RENAMED = {"localspec.models": "models", "localspec.tui": "tui", "localspec.lsp": "lsp"}

packages = find_packages(include=["localspec", "localspec.*"])
for package, folder in RENAMED.items():
    packages += [package] + [f"{package}.{sub}" for sub in find_packages(where=folder)]

setup(packages=packages, package_dir={"localspec": "localspec", **RENAMED})
