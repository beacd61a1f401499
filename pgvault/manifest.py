"""A set's manifest and its verify record as typed, validated models.

read_manifest() accepts what any pgvault wrote: format 1 (keys added after its first
release get defaults) and format 2 (every key present, kind, server and data_raw_bytes
among them).
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from pgvault import __version__, naming
from pgvault.errors import IntegrityError

FORMAT = 2
SCHEMA_BASE = "https://pgvault.dev/schemas/"


def _text_or_datetime(value: object) -> object:
    # Lax datetime parsing takes numbers as Unix times; pgvault always writes ISO 8601.
    if not isinstance(value, str | datetime):
        raise ValueError("Input should be an ISO 8601 date and time")
    return value


Count = Annotated[StrictInt, Field(ge=0)]
Sha256 = Annotated[StrictStr, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Timestamp = Annotated[AwareDatetime, BeforeValidator(_text_or_datetime)]
Prefix = Annotated[
    StrictStr, StringConstraints(pattern=r"^backup-[0-9]{4}-[0-9]{2}-[0-9]{2}-[0-9]{6}$")
]
Compression = Literal["none", "gzip", "zstd"]
# Typed str, not a Literal: callers index files with a kind held in a str.
FileKind = Annotated[
    StrictStr, StringConstraints(pattern=r"^(roles|schema|data|platform|attachments)$")
]
Pair = tuple[StrictStr, StrictStr]

# Keys that came after format 1's first release: a format-1 manifest may lack them, a
# format-2 one has them all (supabase goes with the profile). The last three came with 2.
_LATER_KEYS = ("indexes", "constraints", "output_settings", "encoding", "role_passwords",
               "profile")  # fmt: skip
_FORMAT_2_KEYS = ("kind", "server", "data_raw_bytes")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_json(self) -> dict[str, Any]:
        """Return the JSON object to write (model_validate reads it back equal)."""
        return self.model_dump(mode="json")


class FileEntry(_Model):
    name: StrictStr
    size: Count
    sha256: Sha256


class TableEntry(_Model):
    rows: Count
    sha256: Sha256
    # Bytes of its rows as COPY text (what `show` calls its size); absent before 0.2.
    size: Count | None = None


class Clients(_Model):
    bindir: StrictStr
    version: StrictStr


class Snapshot(_Model):
    id: StrictStr
    time: Timestamp


class SupabaseScopeData(_Model):
    """SupabaseScope.to_manifest() as written; the last three keys came later."""

    managed_schemas: list[StrictStr]
    data_schemas: list[StrictStr]
    bookkeeping_tables: list[StrictStr]
    database_owner: StrictStr
    platform_roles: dict[StrictStr, dict[StrictStr, StrictBool]]
    memberships: list[Pair]
    app_objects_in_managed_schemas: list[tuple[StrictStr, StrictStr, StrictStr]]
    app_functions_in_managed_schemas: list[Pair] = []
    app_grants_on_managed_objects: list[StrictStr] = []
    platform_tables_in_app_schemas: list[StrictStr] = []
    extensions: dict[StrictStr, StrictStr]


class Encryption(_Model):
    """How the set's files (all but the manifest and verify record) are encrypted."""

    method: Literal["age"]
    recipients: list[StrictStr]


class StorageObject(_Model):
    bucket: StrictStr
    key: StrictStr
    size: Count
    sha256: Sha256
    content_type: StrictStr | None = None


class Attachments(_Model):
    """Supabase Storage's objects as the backup copied them into the attachments part:
    every bucket of the set's storage.buckets rows, empty ones included."""

    endpoint: StrictStr
    buckets: list[StrictStr]
    objects: list[StorageObject]


class Manifest(_Model):
    """Everything backup.py writes about one set."""

    format: Literal[1, 2]
    tool: Literal["pgvault"]
    tool_version: StrictStr
    prefix: Prefix
    target: StrictStr
    env: StrictStr
    database: StrictStr
    host: StrictStr
    server_version: StrictStr
    server_major: Count
    clients: Clients
    snapshot: Snapshot
    started_at: Timestamp
    finished_at: Timestamp
    compression: Compression
    files: dict[FileKind, FileEntry] = Field(
        json_schema_extra={"additionalProperties": False, "required": list(naming.SQL_KINDS)}
    )
    # Where the schema file's post-data part (indexes, constraints, triggers) starts.
    schema_post_data_offset: Count
    tables: dict[StrictStr, TableEntry]
    # The value pg_dump's data file sets; None: never called, restored at its start value.
    sequences: dict[StrictStr, StrictInt | None]
    roles: list[StrictStr]
    matviews: list[StrictStr]
    large_objects: Count
    indexes: list[StrictStr] = []
    constraints: list[StrictStr] = []
    output_settings: dict[StrictStr, StrictStr] = {}
    encoding: StrictStr = "UTF8"
    # Before a non-superuser could back up, every roles file had its passwords.
    role_passwords: StrictBool = True
    profile: Literal["plain", "supabase"] = "plain"
    supabase: SupabaseScopeData | None = None
    kind: Literal["regular", "safety"] = "regular"
    # host:port of the source server as the backup saw it (Conn.where).
    server: StrictStr | None = None
    # The data dump's bytes before compression: the next backup's progress estimate.
    data_raw_bytes: Count | None = None
    # Absent: not encrypted (checksums are of the files on disk, so of the ciphertext).
    encryption: Encryption | None = None
    attachments: Attachments | None = None

    @field_validator("format", mode="before")
    @classmethod
    def _int_format(cls, value: object) -> object:
        # Literal[1, 2] alone takes true and 1.0 for 1.
        if type(value) is not int:
            raise ValueError("Input should be 1 or 2")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        # Only a lack is checked: a format-1 manifest that to_json() wrote has every key.
        lack = [k for k in (*_LATER_KEYS, *_FORMAT_2_KEYS) if k not in self.model_fields_set]
        if self.format >= 2 and lack:
            raise ValueError(f"format {self.format} needs {lack[0]}")
        age = self.encryption is not None
        names = {
            k: naming.file_name(self.prefix, k, self.compression, age)
            for k in (*naming.SQL_KINDS, naming.PLATFORM, naming.ATTACHMENTS)
        }
        optional = (naming.PLATFORM, naming.ATTACHMENTS)
        for kind, want in names.items():
            entry = self.files.get(kind)
            if entry is None and kind not in optional:
                raise ValueError(f"no entry for {want}")
            if entry is not None and entry.name != want:
                raise ValueError(f"files.{kind} names {entry.name!r}, not {want!r}")
        if self.schema_post_data_offset > (size := self.files["schema"].size):
            raise ValueError(f"schema_post_data_offset is beyond the schema file's {size} bytes")
        if (naming.ATTACHMENTS in self.files) != (self.attachments is not None):
            raise ValueError("an attachments file goes with an attachments list, and only with it")
        if (self.profile == "supabase") != (self.supabase is not None):
            raise ValueError("a supabase scope goes with profile supabase, and only with it")
        return self

    @property
    def dump_version(self) -> str:
        """Version of the pg_dump that wrote the set ("0" when unknown)."""
        return self.clients.version or "0"

    @property
    def dump_major(self) -> int:
        """dump_version's major number (0 when unknown)."""
        m = re.match(r"\d+", self.dump_version)
        return int(m.group()) if m else 0


class PastVerdict(_Model):
    verdict: Literal["verified", "failed"]
    checked_at: Timestamp
    problems: list[StrictStr] = []


class VerifyRecord(_Model):
    """What verify.py records beside a set: its verdict and what it checked."""

    format: Literal[1] = 1

    verdict: Literal["verified", "failed"]
    checked_at: Timestamp
    duration_s: Annotated[StrictFloat, Field(ge=0, allow_inf_nan=False)]
    server_version: StrictStr
    tables: Count
    rows: Count
    problems: list[StrictStr]
    # What the verifying server could not check (an extension it lacks); not a failure.
    not_checked: list[StrictStr] = []
    # Earlier verdicts on the same set, newest first (at most HISTORY of them).
    history: list[PastVerdict] = []


HISTORY = 20


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# A manifest lists every table (~200 bytes each): far below this even for 100,000 tables.
MAX_BYTES = 64 << 20
# What reading and parsing a hostile or damaged file can raise (ValidationError and
# UnicodeError are ValueErrors; `[` * 100000 is a RecursionError).
_UNREADABLE = (OSError, ValueError, RecursionError, MemoryError)


def _load_json(path: Path) -> Any:
    # NaN and Infinity are Python's extension, not JSON: a record would not write back.
    return json.loads(_read_small(path).decode("utf-8"), parse_constant=_no_constant)


def _read_small(path: Path) -> bytes:
    """The bytes of a regular file of at most MAX_BYTES, read without following a symlink
    (and without blocking on a fifo planted at the name)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("it is not a regular file")
        if st.st_size > MAX_BYTES:
            raise ValueError(f"it is {st.st_size} bytes, over the limit of {MAX_BYTES}")
        chunks, left = [], MAX_BYTES + 1  # it may grow while we read
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:
            raise ValueError(f"it is over the limit of {MAX_BYTES} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _why(e: BaseException) -> str:
    """Why a file could not be read, in a few words."""
    if isinstance(e, OSError):
        return "it is a symbolic link" if e.errno == errno.ELOOP else str(e.strerror or e)
    if isinstance(e, RecursionError):
        return "it is nested too deeply"
    if isinstance(e, MemoryError):
        return "it does not fit in memory"
    return _one_line(str(e))


def _one_line(text: str) -> str:
    # Keys come from the file: a newline in a table name must not break the line.
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _summary(error: ValidationError) -> str:
    # The first of pydantic's errors, as `loc: msg`.
    first = error.errors(include_url=False)[0]
    msg = str(first["msg"]).removeprefix("Value error, ")
    loc = ".".join(str(p) for p in first["loc"])
    return _one_line(f"{loc}: {msg}" if loc else msg)


def read_manifest(path: Path) -> Manifest:
    """Read a set's manifest; IntegrityError unless it is one pgvault could have written
    for the set its file name says (so nothing downstream trips over an odd field)."""
    try:
        data = _load_json(path)
    except _UNREADABLE as e:
        raise IntegrityError(f"manifest {path.name} is unreadable: {_why(e)}") from None
    if not isinstance(data, dict) or type(data.get("format")) is not int or data["format"] < 1:
        raise IntegrityError(f"manifest {path.name} is not a pgvault manifest")
    if data["format"] > FORMAT:
        raise IntegrityError(
            f"manifest {path.name} is of format {data['format']}, written by a newer pgvault "
            f"than this one ({__version__}, format {FORMAT}); upgrade pgvault to read it"
        )
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as e:
        raise IntegrityError(f"manifest {path.name} is not valid: {_summary(e)}") from None
    except (RecursionError, MemoryError) as e:
        raise IntegrityError(f"manifest {path.name} is not valid: {_why(e)}") from None
    prefix = path.name.removesuffix("-manifest.json")
    if manifest.prefix != prefix:
        raise IntegrityError(
            f"manifest {path.name} is not valid: it belongs to {manifest.prefix!r}"
        )
    return manifest


def read_verify_record(path: Path) -> VerifyRecord | None:
    """Read a set's verify record; None when it is missing, unreadable or garbled (no
    verdict can be trusted from it, and listing must not fail because of it)."""
    try:
        return VerifyRecord.model_validate(_load_json(path))
    except _UNREADABLE:
        return None


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schemas (draft 2020-12) of the manifest and the verify record, by name."""
    out: dict[str, dict[str, Any]] = {}
    models: dict[str, type[BaseModel]] = {"manifest": Manifest, "verify-record": VerifyRecord}
    for name, model in models.items():
        schema = model.model_json_schema()
        schema["title"] = "pgvault " + name.replace("-", " ")
        out[name] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"{SCHEMA_BASE}{name}.schema.json",
            **schema,
        }
    return out
