"""What a model folder's ``metadata.json`` holds, and the names and hashes around it.

A model is addressed by a URI ``name:version``; its folder in the store is the URI
with ``:`` replaced by ``@``. ``metadata_problems`` lists everything wrong with a
metadata dict so that a bad install is refused with every reason at once.

>>> uri_to_dirname("multilingual-e5-small:v1")
'multilingual-e5-small@v1'
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pglocalai.errors import InvalidArgument, ModelFormatError

FORMAT = 1
METADATA = "metadata.json"
# name:version, each starting with a letter or digit: the folder name is safe anywhere
URI_RE = re.compile(r"^([a-z0-9][a-z0-9._-]{0,99}):([a-z0-9][a-z0-9._-]{0,49})$")
# models that `pglocalai model install URI` can build without any file from the user
BUILTIN = ("multilingual-e5-small:v1",)
POOLINGS = ("mean", "cls")
OUTPUTS = ("sentence_embedding", "last_hidden_state")


def validate_uri(uri: str) -> str:
    """Return ``uri`` if it is ``name:version`` in the safe charset, else raise InvalidArgument."""
    if not isinstance(uri, str) or not URI_RE.match(uri):
        raise InvalidArgument(
            f"invalid model uri {uri!r}",
            detail="a model uri is name:version, e.g. multilingual-e5-small:v1",
            hint="use lowercase letters, digits, '.', '_' and '-', starting with a letter or digit",
        )
    return uri


def uri_to_dirname(uri: str) -> str:
    """The folder name of a model: its URI with ``:`` replaced by ``@``."""
    return validate_uri(uri).replace(":", "@")


def dirname_to_uri(name: str) -> str | None:
    """The URI of a model folder name, or None when the name is not one."""
    uri = name.replace("@", ":", 1)
    return uri if "@" in name and URI_RE.match(uri) else None


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, streamed (the fp32 graph is ~470 MB)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def reinstall_hint(uri: str, metadata: dict[str, Any] | None = None) -> str:
    """The command that puts a good copy of the model back."""
    if uri in BUILTIN:
        return f"reinstall it: pglocalai model install {uri} --force"
    source = (metadata or {}).get("source", "the original folder")
    return (f"reinstall it from its folder ({source}): "
            f"pglocalai model install --from-hf FOLDER --uri {uri} --force")


@dataclass(frozen=True)
class ModelInfo:
    """An installed model as described by its ``metadata.json``."""

    uri: str
    path: Path
    metadata: dict[str, Any] = field(repr=False)
    dimensions: int
    max_tokens: int
    default_variant: str
    variants: dict[str, dict[str, Any]] = field(repr=False)

    @classmethod
    def from_metadata(cls, path: Path, md: dict[str, Any]) -> ModelInfo:
        problems = metadata_problems(md)
        if problems:
            raise ModelFormatError(f"invalid metadata in {path.name}/{METADATA}",
                                   detail="; ".join(problems),
                                   hint=reinstall_hint(str(md.get("uri", "")), md))
        return cls(md["uri"], path, md, md["dimensions"], md["max_tokens"],
                   md["default_variant"], md["variants"])

    @property
    def files(self) -> dict[str, str]:
        return dict(self.metadata["files"])

    def size_bytes(self) -> int:
        """Bytes on disk of the listed files (missing files count as 0)."""
        total = 0
        for name in self.files:
            with contextlib.suppress(OSError):
                total += (self.path / name).stat().st_size
        return total


def metadata_problems(md: Any) -> list[str]:
    """Everything wrong with a metadata dict (empty when it is valid)."""
    if not isinstance(md, dict):
        return ["metadata is not a JSON object"]
    out: list[str] = []
    if md.get("format") != FORMAT:
        out.append(f"expected format {FORMAT}, not {md.get('format')!r}")
    if not isinstance(md.get("uri"), str) or not URI_RE.match(md["uri"]):
        out.append(f"invalid uri {md.get('uri')!r}")
    for key in ("dimensions", "max_tokens"):
        if type(md.get(key)) is not int or md[key] <= 0:
            out.append(f"{key} must be a positive integer, not {md.get(key)!r}")
    if md.get("pooling") not in POOLINGS:
        out.append(f"pooling must be one of {', '.join(POOLINGS)}, not {md.get('pooling')!r}")
    if not isinstance(md.get("normalize"), bool):
        out.append("normalize must be true or false")
    for key in ("source", "license", "tokenizer"):
        if not isinstance(md.get(key), str) or not md[key]:
            out.append(f"{key} must be a non-empty string")
    variants = md.get("variants")
    if not isinstance(variants, dict) or not variants:
        out.append("variants must be a non-empty object")
        variants = {}
    if md.get("default_variant") not in variants:
        out.append(f"default_variant {md.get('default_variant')!r} is not among the variants")
    referenced = [md.get("tokenizer")]
    for name, v in variants.items():
        if not isinstance(v, dict) or not isinstance(v.get("file"), str):
            out.append(f"variant {name} has no file")
            continue
        referenced.append(v["file"])
        # an OpenVINO variant takes the gathered word rows instead of the ids, and names
        # the files they come from
        first = "word_embeddings" if v.get("engine") == "openvino" else "input_ids"
        if not isinstance(v.get("inputs"), list) or first not in v["inputs"]:
            out.append(f"variant {name} must list its inputs, including {first}")
        if v.get("engine") not in (None, "onnxruntime", "openvino"):
            out.append(f"variant {name} engine must be onnxruntime or openvino")
        if v.get("engine") == "openvino":
            for key in ("weights", "word_table"):
                if not isinstance(v.get(key), str):
                    out.append(f"variant {name} needs its {key} file")
                else:
                    referenced.append(v[key])
        if v.get("output") not in OUTPUTS:
            out.append(f"variant {name} output must be one of {', '.join(OUTPUTS)}")
    files = md.get("files")
    if not isinstance(files, dict) or not files:
        return [*out, "files must map every file name to its sha256"]
    out += [f"{n} is not listed in files" for n in referenced if isinstance(n, str)
            and n not in files]
    for name, digest in files.items():
        if not plain_name(name):
            out.append(f"file name {name!r} is not a plain file name")
        if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
            out.append(f"sha256 of {name} is malformed")
    return out


def plain_name(name: Any) -> bool:
    return (isinstance(name, str) and name not in ("", ".", "..", METADATA)
            and "/" not in name and "\\" not in name and not name.startswith("."))
