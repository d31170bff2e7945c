"""Episodes as rosbag2 bags (MCAP): written so that a crash cannot corrupt them, recovered
after a killed recording, read back.

One bag per episode, a folder as ``ros2 bag record`` makes it::

    episode_000042/
      episode_000042.mcap   # the messages, CDR as they travelled over DDS
      metadata.yaml         # rosbag2's index of the bag (written at close)
      episode.yaml          # this project's: the take (task, operator, outcome, audit) and
                            # the robot contract (config, URDF, cameras, software version)

``episode.yaml`` is written (durably) when the recording starts and again when it ends, so a
recording that was killed still says what it was; the same content goes into
``metadata.yaml``'s ``custom_data`` at close, where ``ros2 bag info`` shows it.

Crash safety. MCAP stores messages in chunks; the writer keeps the open chunk in memory and
appends it to the file whole. :meth:`EpisodeBagWriter.flush` closes the open chunk and hands the
file to the operating system (``fsync`` optional): from then on everything written so far
survives a SIGKILL of the recorder. What a killed recording lacks is MCAP's summary and
rosbag2's ``metadata.yaml``; :func:`recover_bag` reads every complete chunk of such a file and
rewrites it as a finished bag (the killed file is kept beside it, renamed ``*.partial``), as
``ros2 bag reindex`` does for rosbag2's own recorder.

Writing and reading go through ``rosbags`` (the bag layout and CDR) and recovery through the
``mcap`` package, the format's reference reader. No ROS installation is needed.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

from ate_core.io.durable import fsync_dir, replace_file

__all__ = ["EPISODE_FILE", "BagError", "EpisodeBagWriter", "BagReader", "Recovery",
           "recover_bag", "is_finished", "typestore", "decode_cdr", "header_stamp_ns", "main"]

PathLike = Union[str, os.PathLike]

#: The take's own file inside the bag folder.
EPISODE_FILE = "episode.yaml"
#: The version of episode.yaml's layout.
EPISODE_FORMAT = "ate_episode_bag/1"
#: rosbag2's bag format version as Jazzy writes it.
BAG_VERSION = 9
#: rosbag2's index file; present only in a finished bag.
METADATA_FILE = "metadata.yaml"
#: Statuses of a take in episode.yaml.
STATUSES = ("recording", "saved", "recovered")


class BagError(ValueError):
    """A bag that cannot be written, read or recovered; names the file."""

    def __init__(self, path: PathLike, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = str(path)
        self.message = message

    def __reduce__(self):  # pickled whole: a worker process's error reaches its parent intact
        return type(self), (self.path, self.message)


_TYPESTORE: Any = None


def typestore() -> Any:
    """The message definitions of ROS 2 Jazzy (rosbags' own copy: the standard messages)."""
    global _TYPESTORE
    if _TYPESTORE is None:
        from rosbags.typesys import Stores, get_typestore

        _TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
    return _TYPESTORE


def header_stamp_ns(msg: Any) -> int:
    """A read-back message's ``header.stamp`` in ns (the observation's or the tick's time)."""
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def _mcap_file(path: Path) -> Path:
    return path / f"{path.name}.mcap"


def is_finished(path: PathLike) -> bool:
    """Whether the bag folder has rosbag2's index (a recording that ended, or was recovered)."""
    return (Path(path) / METADATA_FILE).is_file()


def _dump_yaml(data: Mapping[str, Any]) -> bytes:
    return yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True).encode()


def _read_episode_file(path: Path) -> Dict[str, Any]:
    file = path / EPISODE_FILE
    if not file.is_file():
        return {}
    try:
        data = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise BagError(file, f"unreadable: {e}") from None
    if not isinstance(data, dict):
        raise BagError(file, f"expected a mapping, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------------------------
# Writing


class EpisodeBagWriter:
    """One episode's bag, open for writing: ``add_topic``, ``write`` the serialized messages,
    ``flush`` now and then, and ``close`` (or ``discard``).

    ``info`` goes into episode.yaml at once (with ``status: recording`` and the start time);
    ``close(outcome)`` adds ``outcome`` and sets ``status: saved``. Messages are the CDR bytes
    of a ROS message (an rclpy subscription with ``raw=True`` delivers exactly these), logged
    at ``log_time_ns`` (the recorder's receive time, as ``ros2 bag record``); the messages' own
    header stamps stay inside them. ``compress``: zstd per MCAP chunk (rosbag2's
    ``zstd_fast`` preset does the same); compressed images gain nothing from it, joint states a
    lot. Not thread-safe: one thread owns a writer.
    """

    def __init__(self, path: PathLike, info: Mapping[str, Any], *, compress: bool = True) -> None:
        from rosbags.rosbag2 import Writer, WriterError
        from rosbags.rosbag2.enums import CompressionFormat, CompressionMode, StoragePlugin

        self.path = Path(path)
        if self.path.exists():
            raise BagError(self.path, "exists already; a bag is never written over")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = Writer(self.path, version=BAG_VERSION, storage_plugin=StoragePlugin.MCAP)
        if compress:
            self._writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        try:
            self._writer.open()
        except WriterError as e:
            raise BagError(self.path, str(e)) from None
        self._connections: Dict[str, Any] = {}
        self.topics: Dict[str, str] = {}
        self.counts: Dict[str, int] = {}
        self.bytes_written = 0
        self._closed = False
        self.info: Dict[str, Any] = {"format": EPISODE_FORMAT, "status": "recording",
                                     "started_unix_s": time.time(), **dict(info)}
        self._write_episode_file()

    def _write_episode_file(self) -> None:
        try:
            replace_file(self.path / EPISODE_FILE, _dump_yaml(self.info))
        except yaml.YAMLError as e:
            raise BagError(self.path / EPISODE_FILE, f"the episode's info is not YAML data: {e}") from None

    def add_topic(self, topic: str, msgtype: str) -> None:
        """Register ``topic`` with its type (``sensor_msgs/msg/JointState``; the ROS 2 name)."""
        if topic in self._connections:
            if self.topics[topic] != msgtype:
                raise BagError(self.path, f"topic {topic} is {self.topics[topic]}, not {msgtype}")
            return
        store = typestore()
        if msgtype not in store.fielddefs:
            raise BagError(self.path, f"topic {topic}: unknown message type {msgtype!r} "
                                      f"(expected a standard ROS 2 Jazzy type such as "
                                      f"sensor_msgs/msg/JointState)")
        self._connections[topic] = self._writer.add_connection(topic, msgtype, typestore=store)
        self.topics[topic] = msgtype
        self.counts[topic] = 0

    def write(self, topic: str, log_time_ns: int, data: Union[bytes, memoryview]) -> None:
        if self._closed:
            raise BagError(self.path, "write after close")
        connection = self._connections.get(topic)
        if connection is None:
            raise BagError(self.path, f"write to {topic}, which was never added")
        self._writer.write(connection, int(log_time_ns), data)
        self.counts[topic] += 1
        self.bytes_written += len(data)

    def flush(self, sync: bool = True) -> None:
        """Close the open MCAP chunk and write it to the file: every message written so far
        then survives a kill of this process (``sync``: and a power loss, via fsync).

        rosbags' MCAP storage closes a chunk on its own only when it reaches 1 MiB; its
        ``close_chunk`` and file object are what this reaches into (pinned rosbags; a test
        kills a recording process to hold it to this).
        """
        if self._closed:
            return
        storage = self._writer.storage
        if storage.chunk.bio.tell():
            storage.close_chunk()
        storage.bio.flush()
        if sync:
            os.fsync(storage.bio.fileno())

    def close(self, outcome: Optional[Mapping[str, Any]] = None) -> Path:
        """Finish the bag (MCAP summary, metadata.yaml with the take in ``custom_data``) and
        record ``outcome`` (success, audit, ...) in episode.yaml. Returns the bag's folder."""
        if self._closed:
            raise BagError(self.path, "closed twice")
        self.info.update(dict(outcome or {}))
        self.info["status"] = "saved"
        self.info["stopped_unix_s"] = time.time()
        self.info["message_counts"] = dict(self.counts)
        for key, value in self.info.items():
            if key != "contract":  # the contract is large; episode.yaml holds it
                self._writer.set_custom_data(f"ate.{key}", yaml.safe_dump(value).strip())
        self._writer.close()
        self._closed = True
        self._write_episode_file()
        fsync_dir(self.path)
        return self.path

    def discard(self) -> None:
        """Drop the take: the bag folder is removed."""
        if not self._closed:
            try:
                self._writer.storage.bio.close()
            except OSError:
                pass
            self._closed = True
        shutil.rmtree(self.path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Recovery


@dataclass(frozen=True)
class Recovery:
    """What :func:`recover_bag` saved: messages per topic, and the bytes at the end of the
    killed file that held no complete chunk (lost: they were never flushed)."""

    path: str
    counts: Dict[str, int]
    lost_bytes: int

    @property
    def messages(self) -> int:
        return sum(self.counts.values())


def recover_bag(path: PathLike) -> Recovery:
    """Turn a killed recording (no metadata.yaml) into a finished bag holding every complete
    MCAP chunk, i.e. every message written before the recorder's last :meth:`flush`.

    The killed file is kept as ``<name>.mcap.partial``; episode.yaml gets ``status:
    recovered``. A finished bag is a :class:`BagError` (nothing to recover).
    """
    from mcap.exceptions import McapError
    from mcap.records import Channel, Message, Schema
    from mcap.stream_reader import StreamReader
    from rosbags.rosbag2 import Writer
    from rosbags.rosbag2.enums import CompressionFormat, CompressionMode, StoragePlugin

    path = Path(path)
    source = _mcap_file(path)
    if is_finished(path):
        raise BagError(path, "is a finished bag (it has metadata.yaml): nothing to recover")
    if not source.is_file():
        raise BagError(path, f"has no {source.name}: not a bag folder this recorder wrote")
    size = source.stat().st_size
    tmp = path.parent / f".{path.name}.recovering-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    writer = Writer(tmp / path.name, version=BAG_VERSION, storage_plugin=StoragePlugin.MCAP)
    writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    tmp.mkdir()
    writer.open()
    schemas: Dict[int, str] = {}
    connections: Dict[int, Any] = {}
    counts: Dict[str, int] = {}
    good_end = 0
    store = typestore()
    try:
        with open(source, "rb") as f:
            reader = StreamReader(f, skip_magic=False, emit_chunks=False)
            try:
                for record in reader.records:
                    if isinstance(record, Schema):
                        schemas[record.id] = record.name
                    elif isinstance(record, Channel):
                        msgtype = schemas.get(record.schema_id)
                        if msgtype is None or msgtype not in store.fielddefs:
                            raise BagError(source, f"channel {record.topic}: unknown schema "
                                                   f"{msgtype!r}")
                        connections[record.id] = writer.add_connection(
                            record.topic, msgtype, typestore=store)
                        counts[record.topic] = 0
                    elif isinstance(record, Message):
                        conn = connections.get(record.channel_id)
                        if conn is None:
                            raise BagError(source, f"a message on channel {record.channel_id}, "
                                                   "which no channel record declares")
                        writer.write(conn, record.log_time, record.data)
                        counts[conn.topic] += 1
                    good_end = f.tell()
            except BagError:
                raise
            except McapError:
                pass  # the unflushed tail: an incomplete record ends the readable part
            except Exception:  # noqa: BLE001 - a damaged chunk (zstd, struct) ends it as well
                pass
        writer.close()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    info = _read_episode_file(path)
    os.replace(source, source.with_name(source.name + ".partial"))
    os.replace(tmp / path.name / source.name, source)
    os.replace(tmp / path.name / METADATA_FILE, path / METADATA_FILE)
    shutil.rmtree(tmp, ignore_errors=True)
    if info:
        info["status"] = "recovered"
        info["recovered"] = {"messages": sum(counts.values()),
                             "lost_bytes": max(0, size - good_end)}
        info["message_counts"] = counts
        replace_file(path / EPISODE_FILE, _dump_yaml(info))
    fsync_dir(path)
    return Recovery(path=str(path), counts=counts, lost_bytes=max(0, size - good_end))


# ---------------------------------------------------------------------------------------------
# Reading


class BagReader:
    """A finished bag, read back: ``info`` (episode.yaml; {} for a bag another tool wrote),
    ``topics`` ({topic: type}), ``counts``, ``messages()``.

    Any bag rosbag2 can write is accepted (sqlite3 or MCAP), as long as its types are
    standard ROS 2 messages. Use as a context manager.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise BagError(self.path, "no such bag folder")
        if not is_finished(self.path):
            hint = (" (a killed recording: `python -m ate_core.data.bag recover "
                    f"{self.path}` makes it readable)" if _mcap_file(self.path).is_file() else "")
            raise BagError(self.path, f"has no {METADATA_FILE}{hint}")
        self.info = _read_episode_file(self.path)
        from rosbags.rosbag2 import Reader
        from rosbags.rosbag2.errors import ReaderError

        self._reader = Reader(self.path)
        try:
            self._reader.open()
        except (ReaderError, OSError, ValueError, KeyError) as e:
            raise BagError(self.path, f"cannot be opened: {e}") from None
        self.topics: Dict[str, str] = {c.topic: c.msgtype for c in self._reader.connections}
        self.counts: Dict[str, int] = {}
        for c in self._reader.connections:
            self.counts[c.topic] = self.counts.get(c.topic, 0) + c.msgcount
        store = typestore()
        unknown = sorted({t for t in self.topics.values() if t not in store.fielddefs})
        if unknown:
            self.close()
            raise BagError(self.path, f"non-standard message types {unknown}")

    def __enter__(self) -> "BagReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._reader.close()

    @property
    def start_ns(self) -> int:
        return int(self._reader.start_time)

    @property
    def end_ns(self) -> int:
        return int(self._reader.end_time)

    def raw(self, topics: Optional[Sequence[str]] = None) -> Iterator[Tuple[str, int, bytes]]:
        """``(topic, log_time_ns, cdr_bytes)`` in log-time order."""
        wanted = [c for c in self._reader.connections if topics is None or c.topic in topics]
        try:
            for conn, log_ns, data in self._reader.messages(connections=wanted):
                yield conn.topic, int(log_ns), data
        except Exception as e:  # noqa: BLE001 - a damaged file fails in rosbags, zstd or struct
            raise BagError(self.path, f"unreadable after some messages: "
                                      f"{type(e).__name__}: {e}") from None

    def messages(self, topics: Optional[Sequence[str]] = None) -> Iterator[Tuple[str, int, Any]]:
        """``(topic, log_time_ns, message)``, deserialized (rosbags' message classes: the same
        fields as the ROS ones; numeric arrays as numpy)."""
        for topic, log_ns, data in self.raw(topics):
            try:
                msg = decode_cdr(data, self.topics[topic])
            except Exception as e:  # rosbags raises struct/index errors on bad CDR
                raise BagError(self.path, f"{topic} at {log_ns} ns: not a valid "
                                          f"{self.topics[topic]}: {e}") from None
            yield topic, log_ns, msg


def decode_cdr(data: Union[bytes, memoryview], msgtype: str) -> Any:
    """A CDR message as rosbags' message class, ignoring bytes after its end.

    rosbags' ``deserialize_cdr`` refuses more than 3 trailing bytes, but ROS's own readers
    ignore them, and rclpy's ``serialize_message`` (FastDDS sizes the buffer by an estimate)
    leaves up to several uninitialised bytes at the end: such a bag plays with ``ros2 bag``.
    """
    if len(data) < 4 or bytes(data[:2]) not in (b"\x00\x00", b"\x00\x01"):
        raise ValueError("not a CDR encapsulation header")
    msgdef = typestore().get_msgdef(msgtype)
    read = msgdef.deserialize_cdr_le if data[1] else msgdef.deserialize_cdr_be
    message, _ = read(memoryview(data)[4:], 0, msgdef.cls, typestore())
    return message


def main(argv: Optional[List[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ate_core.data.bag",
                                     description="Inspect episode bags or recover a killed recording.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="the take, its topics and message counts")
    p_info.add_argument("bags", nargs="+")
    p_rec = sub.add_parser("recover", help="finish a killed recording (keeps every flushed message)")
    p_rec.add_argument("bags", nargs="+")
    args = parser.parse_args(argv)
    failed = 0
    for bag in args.bags:
        try:
            if args.command == "recover":
                r = recover_bag(bag)
                print(f"{bag}: recovered {r.messages} messages ({r.lost_bytes} bytes unflushed "
                      "at the kill were lost)")
                for topic, n in sorted(r.counts.items()):
                    print(f"  {topic}: {n}")
            else:
                with BagReader(bag) as reader:
                    info = {k: v for k, v in reader.info.items() if k != "contract"}
                    print(f"{bag}: {yaml.safe_dump(info, sort_keys=False).strip()}")
                    for topic, msgtype in sorted(reader.topics.items()):
                        print(f"  {topic} [{msgtype}]: {reader.counts[topic]}")
        except BagError as e:
            print(f"error: {e}")
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
