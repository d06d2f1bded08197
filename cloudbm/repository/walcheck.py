"""The WAL archive's continuity, judged from the repository: what `cloudbm wal-verify` and
`cloudbm check` report.

From the oldest DONE backup's start segment to the newest segment of each timeline: gaps,
timelines that no history file explains, history objects that are not a history of their
timeline, and segment objects stored under another segment's name.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cloudbm.catalog import DONE
from cloudbm.errors import ConfigError, IntegrityError, NotFoundError
from cloudbm.pg import timeline, walfile, walnames
from cloudbm.repository import wal
from cloudbm.repository.catalogue import load_catalogue
from cloudbm.repository.descriptor import Descriptor
from cloudbm.repository.objects import Repository
from cloudbm.storage.base import ObjectInfo


def wal_report(repo: Repository, *, jobs: int = 1, deep: bool = False) -> dict[str, Any]:
    """Gaps, unexplained timelines, history objects that are not histories of their timeline
    and segment objects whose first page is not their name's, from the oldest DONE backup on
    (report["ok"] says whether there are none; report["problems"] lists them, one line each).

    Every history object is read (a few small objects). A segment is compared with its name
    from the header facts wal-push records in its metadata, free when the listing carries
    metadata (file, GCS, Azure); else (S3: a HEAD each; objects from before: their first bytes)
    only the segments that decide a verdict are checked: the one after each gap and the newest
    of each timeline, so a misnamed object is reported as such and never as the end of a
    gap. `deep` checks every segment and partial segment.
    """
    finished = [e for e in load_catalogue(repo) if e.status == DONE and e.manifest]
    listing = wal.listing(repo)
    try:
        descriptor: Descriptor | None = repo.read_descriptor()
    except NotFoundError:
        descriptor = None
    checker = _WalChecker(repo, listing, descriptor, max(1, jobs))
    histories, history_problems = checker.histories()
    segment_size = descriptor.wal_segment_size if descriptor else walnames.DEFAULT_SEGMENT_SIZE
    start_name = finished[0].manifest.start_wal if finished and finished[0].manifest else None
    report = _continuity(checker, histories, segment_size, start_name, deep)
    report["problems"] += history_problems
    report["ok"] = report["ok"] and not history_problems
    return report


def _continuity(
    checker: _WalChecker,
    histories: dict[int, list[timeline.Switch]],
    segment_size: int,
    start_name: str | None,
    deep: bool,
) -> dict[str, Any]:
    """Gaps per timeline, leaving out segments stored under the wrong name."""
    by_tli: dict[int, dict[int, str]] = {}
    for name in checker.listing:
        parsed = walnames.parse(name)
        if parsed.kind == walnames.WalKind.SEGMENT:
            number = walnames.segment_number(parsed, segment_size)
            by_tli.setdefault(parsed.timeline, {})[number] = name
    start = walnames.parse(start_name) if start_name else None
    start_no = walnames.segment_number(start, segment_size) if start else None
    if start is not None and start_no is not None and start.timeline in by_tli:
        # Older segments serve no backup: continuity matters from the oldest one's start.
        kept = {n: v for n, v in by_tli[start.timeline].items() if n >= start_no}
        by_tli[start.timeline] = kept

    def spans() -> dict[int, tuple[int, list[int], list[list[int]]]]:
        """tli -> (first number, numbers present, runs of missing numbers)."""
        out = {}
        for tli, names in by_tli.items():
            numbers = sorted(n for n, name in names.items() if name not in checker.misnamed)
            if not numbers:
                continue
            low = numbers[0]
            if start is not None and start_no is not None and tli == start.timeline:
                low = start_no
            have = set(numbers)
            runs: list[list[int]] = []
            run: list[int] = []
            for n in range(low, numbers[-1] + 1):
                if n in have:
                    if run:
                        runs.append(run)
                        run = []
                else:
                    run.append(n)
            out[tli] = (low, numbers, runs)
        return out

    checker.judge_listed(histories)
    if deep:
        everything = [n for n in checker.listing if walnames.parse(n).has_page_header]
        checker.judge(everything, histories)
    while True:
        # The segment after each gap and the newest of each timeline decide the verdict.
        suspects = []
        for tli, (_low, numbers, runs) in spans().items():
            suspects.append(by_tli[tli][numbers[-1]])
            suspects += [by_tli[tli][run[-1] + 1] for run in runs]
        if not checker.judge(suspects, histories):
            break

    report: dict[str, Any] = {"from": start_name, "timelines": {}, "unexpected": [], "ok": True}
    for tli, (low, numbers, runs) in sorted(spans().items()):
        gaps = [_gap(tli, run, segment_size) for run in runs]
        report["timelines"][str(tli)] = {
            "first": walnames.from_number(tli, low, segment_size),
            "last": walnames.from_number(tli, numbers[-1], segment_size),
            "segments": len(numbers),
            "gaps": gaps,
        }
        if gaps:
            report["ok"] = False
        if tli > 1 and walnames.history_name(tli) not in checker.listing:
            report["unexpected"].append(
                f"timeline {tli} has segments but no {walnames.history_name(tli)}"
            )
            report["ok"] = False
    report["misnamed"] = [checker.misnamed[n] for n in sorted(checker.misnamed)]
    report["unchecked"] = sorted(checker.unchecked)
    report["ok"] = report["ok"] and not report["misnamed"]
    report["problems"] = (
        [
            f"timeline {t}: missing {', '.join(d['gaps'][:5])}"
            + (f" and {len(d['gaps']) - 5} more gaps" if len(d["gaps"]) > 5 else "")
            for t, d in report["timelines"].items()
            if d["gaps"]
        ]
        + report["unexpected"]
        + report["misnamed"]
    )
    return report


class _WalChecker:
    """Compares archived WAL objects with their names, each object at most once."""

    def __init__(
        self,
        repo: Repository,
        listing: dict[str, ObjectInfo],
        descriptor: Descriptor | None,
        jobs: int,
    ) -> None:
        self.repo = repo
        self.listing = listing
        self.descriptor = descriptor
        self.jobs = jobs
        self.checked: set[str] = set()
        self.misnamed: dict[str, str] = {}  # name -> problem line
        self.unchecked: set[str] = set()  # no metadata and no key to read the object

    def _where(self, name: str) -> str:
        return self.repo.where(self.listing[name].key)

    def histories(self) -> tuple[dict[int, list[timeline.Switch]], list[str]]:
        """Switch points of every history object that is a history of its timeline, and a
        problem line for each one that is not."""
        out: dict[int, list[timeline.Switch]] = {}
        problems: list[str] = []
        for name in sorted(n for n in self.listing if n.endswith(".history")):
            tli = walnames.parse(name).timeline
            try:
                switches = self._history(name, tli)
            except timeline.HistoryError as exc:
                problems.append(
                    f"{self._where(name)} is not a history of timeline {tli} ({exc}): recovery "
                    f"cannot follow timeline {tli} with it; remove it from the archive and archive "
                    "the history file PostgreSQL wrote, if a server still has it"
                )
                continue
            except IntegrityError as exc:
                problems.append(f"{self._where(name)}: {exc}")
                continue
            if switches is None:
                self.unchecked.add(name)
            else:
                out[tli] = switches
        return out, problems

    def _history(self, name: str, tli: int) -> list[timeline.Switch] | None:
        """The object's switch points (HistoryError if it is not a history of `tli`); None
        when this host can neither decrypt it nor find the metadata wal-push wrote."""
        key = self.listing[name].key
        try:
            raw, _ = self.repo.get_bytes(key)
        except ConfigError:  # a host with only the public key: what wal-push recorded
            meta = self.listing[name].metadata
            if wal.META_SWITCHES not in meta:
                meta = self.repo.storage.head(key).metadata
            plain = meta.get(wal.META_SWITCHES)
            return None if plain is None else timeline.parse_switches(plain, tli)
        return timeline.read_history(raw, tli)

    def judge_listed(self, histories: dict[int, list[timeline.Switch]]) -> None:
        """Judge, for free, every object whose listing carries wal-push's header facts."""
        for name, info in self.listing.items():
            header = walfile.header_from_metadata(info.metadata)
            if header is not None and walnames.parse(name).has_page_header:
                self.checked.add(name)
                self._verdict(name, header, histories)

    def judge(self, names: list[str], histories: dict[int, list[timeline.Switch]]) -> bool:
        """Read the headers of `names` not judged yet (in parallel); True if any was new."""
        todo = sorted(set(names) - self.checked)
        if not todo:
            return False
        self.checked.update(todo)
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            for name, header in zip(todo, pool.map(self._header, todo), strict=True):
                if isinstance(header, str):
                    self.misnamed[name] = f"{self._where(name)}: {header}"
                elif header is None:
                    self.unchecked.add(name)
                else:
                    self._verdict(name, header, histories)
        return True

    def _header(self, name: str) -> walfile.SegmentHeader | str | None:
        """The object's first page header: from its metadata, else its first bytes; a problem
        line if it has none; None if this host cannot read it (no private key)."""
        info = self.listing[name]
        meta = info.metadata
        if wal.META_KIND not in meta:  # this backend lists no metadata
            meta = self.repo.storage.head(info.key).metadata
        header = walfile.header_from_metadata(meta)
        if header is not None:
            return header
        try:
            with self.repo.open_stream(info.key) as stream:
                return walfile.read_segment_header(stream.read(walfile.LONG_HEADER_SIZE), name)
        except ConfigError:
            return None
        except IntegrityError as exc:
            return str(exc)

    def _verdict(
        self, name: str, header: walfile.SegmentHeader, histories: dict[int, list[timeline.Switch]]
    ) -> None:
        parsed = walnames.parse(name)
        why = walfile.name_mismatch(header, parsed)
        if why is None and header.timeline < parsed.timeline and parsed.timeline in histories:
            why = walfile.ancestor_mismatch(header, parsed, histories[parsed.timeline])
        desc = self.descriptor
        if why is None and desc and header.system_identifier != desc.system_identifier:
            why = (
                f"it belongs to the cluster with system identifier {header.system_identifier}, "
                f"not the repository's {desc.system_identifier}"
            )
        if why is not None:
            self.misnamed[name] = (
                f"{self._where(name)} is stored under the wrong name: {why}; recovery would "
                "stop there: remove it from the archive (keep a copy while the WAL it holds is "
                "not archived under its own name)"
            )


def _gap(tli: int, run: list[int], segment_size: int) -> str:
    first = walnames.from_number(tli, run[0], segment_size)
    if len(run) == 1:
        return first
    return f"{first}..{walnames.from_number(tli, run[-1], segment_size)}"
