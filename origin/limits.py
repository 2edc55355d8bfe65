"""What an archive may hold (``Limits``, from the origin's command line) and the ``Budget``
that counts what one archive has produced so far against them."""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import ConfigError, TooLarge, UnsafeArchive

__all__ = ["ENTRY_OVERHEAD", "Budget", "Limits"]

# A tar stream may exceed its file data by this much per entry allowed: the header block,
# the data's padding, and typically one PAX or long-name record (about 1 KiB each).
ENTRY_OVERHEAD = 4 << 10


@dataclass(frozen=True)
class Limits:
    """Each field is the origin's flag of the same name (``max_upload``: ``--max-upload``)."""

    max_upload: int = 64 << 20
    max_unpacked: int = 256 << 20
    # files in an archive, and directories too: 10,000 subpackages of five files take 50,478
    # files and 30,084 directories (issue 16; published in 35 s, 170 MiB peak)
    max_files: int = 60_000
    max_ratio: float = 200.0
    ratio_floor: int = 1 << 20  # no flag: the ratio is judged once an entry has produced this much
    max_subpackages: int = 10_000  # subPackages entries of app.json

    def __post_init__(self) -> None:
        if self.max_upload < 1:
            raise ConfigError("--max-upload must be at least 1 byte")
        if self.max_unpacked < 1:
            raise ConfigError("--max-unpacked must be at least 1 byte")
        if self.max_files < 1:
            raise ConfigError("--max-files must be at least 1")
        if not self.max_ratio >= 1:  # also refuses NaN
            raise ConfigError("--max-ratio must be at least 1")
        if self.ratio_floor < 0:
            raise ConfigError("ratio_floor must not be negative")
        if self.max_subpackages < 1:
            raise ConfigError("--max-subpackages must be at least 1")

    @property
    def max_entries(self) -> int:
        """Archive entries (files, directories) read before giving up."""
        return 2 * self.max_files

    @property
    def max_tar_stream(self) -> int:
        """Bytes a tar stream may hold in all: file data plus the headers, metadata and
        padding around it, so that metadata cannot keep the origin decompressing either."""
        return self.max_unpacked + self.max_entries * ENTRY_OVERHEAD


class Budget:
    """Counts what an archive has produced so far and raises the moment a limit is crossed.

    ``dirs`` holds every directory an entry lies in or names; it is closed under prefixes
    and never holds a file, so a path's parents are walked from the deepest and the walk
    stops at the first known directory: the work (and the memory, since directories are
    bounded like files) stays linear in what the archive holds."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.unpacked = 0
        self.paths: set[str] = set()
        self.dirs: set[str] = set()

    def add_file(self, path: str) -> None:
        if path in self.paths:
            raise UnsafeArchive(f"archive holds {path!r} twice")
        if path in self.dirs:
            raise UnsafeArchive(f"archive holds {path!r} both as a file and as a directory")
        if len(self.paths) >= self.limits.max_files:
            raise TooLarge(f"archive holds more than {self.limits.max_files} files")
        self._add_parents(path)
        self.paths.add(path)

    def add_dir(self, path: str) -> None:
        if path in self.paths:
            raise UnsafeArchive(f"archive holds {path!r} both as a file and as a directory")
        self._add_parents(path + "/")

    def _add_parents(self, path: str) -> None:
        end = path.rfind("/")
        while end > 0:
            parent = path[:end]
            if parent in self.dirs:
                return
            if parent in self.paths:
                raise UnsafeArchive(f"{path.rstrip('/')!r} lies under the file {parent!r}")
            if len(self.dirs) >= self.limits.max_files:
                raise TooLarge(f"archive holds more than {self.limits.max_files} directories")
            self.dirs.add(parent)
            end = path.rfind("/", 0, end)

    def add_bytes(self, n: int) -> None:
        self.unpacked += n
        if self.unpacked > self.limits.max_unpacked:
            raise TooLarge(f"archive unpacks to more than {self.limits.max_unpacked} bytes")

    def check_ratio(self, produced: int, consumed: int, what: str) -> None:
        lim = self.limits
        if produced > lim.ratio_floor and produced > lim.max_ratio * max(consumed, 1):
            raise TooLarge(f"{what} inflates more than {lim.max_ratio:g} times (a decompression bomb?)")
