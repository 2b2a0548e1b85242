"""Feedback records: what a user said about a completion, read and checked.

A record is a dict with

``user_id`` (str or int)
    Who gave the feedback.
``prompt``, ``completion`` (str)
    The user's message and the model's reply.
``label`` (bool; 0 and 1 are accepted)
    The user's thumbs up (True) or down (False) on the reply.
``conversation_id`` (str or int, optional)
    Records sharing it belong to one conversation; without it a record is a
    conversation of its own.
``flagged`` (bool, optional)
    A safety classifier's verdict on the user's message (True: unsafe).

Other keys are kept as they are (the simulation adds ``user_type`` and
``true_label``).
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterable, List, Mapping, Union

__all__ = ["REQUIRED_FIELDS", "OPTIONAL_FIELDS", "check_records", "label_of", "load_feedback"]

REQUIRED_FIELDS = ("user_id", "prompt", "completion", "label")
OPTIONAL_FIELDS = ("conversation_id", "flagged")

Record = Dict[str, Any]


def _as_bool(value: Any):
    """``value`` as a bool when it is a bool or the integer 0 or 1, else None."""
    if isinstance(value, bool):
        return value
    # 0/1 as int (or a float equal to it, as some JSON writers emit), never strings.
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    return None


def _record_problem(record: Any) -> Union[str, None]:
    """What is wrong with one record (a sentence naming the field), or None."""
    if not isinstance(record, Mapping):
        return f"a record must be a JSON object / dict, got {type(record).__name__}"
    for field in REQUIRED_FIELDS:
        if field not in record:
            return f"missing field {field!r}"
    user = record["user_id"]
    if isinstance(user, bool) or not isinstance(user, (str, int)):
        return f"field 'user_id' must be a string or an integer, got {user!r}"
    for field in ("prompt", "completion"):
        if not isinstance(record[field], str):
            return f"field {field!r} must be a string, got {type(record[field]).__name__}"
    if _as_bool(record["label"]) is None:
        return f"field 'label' must be true/false or 0/1, got {record['label']!r}"
    if "conversation_id" in record and record["conversation_id"] is not None:
        conv = record["conversation_id"]
        if isinstance(conv, bool) or not isinstance(conv, (str, int)):
            return f"field 'conversation_id' must be a string or an integer, got {conv!r}"
    if "flagged" in record and record["flagged"] is not None and _as_bool(record["flagged"]) is None:
        return f"field 'flagged' must be true/false or 0/1, got {record['flagged']!r}"
    return None


def check_records(records: Iterable[Mapping[str, Any]]) -> List[Mapping[str, Any]]:
    """Check in-memory records; return them as a list (the same objects).

    Raises
    ------
    TypeError
        ``records`` is not an iterable of dicts.
    ValueError
        A record lacks a field or has a wrong value; the message names the
        record's index and the field.
    """
    if isinstance(records, (str, bytes, Mapping)):
        raise TypeError(f"records must be a list of dicts, got {type(records).__name__}")
    try:
        records = list(records)
    except TypeError:
        raise TypeError(f"records must be a list of dicts, got {type(records).__name__}") from None
    for index, record in enumerate(records):
        problem = _record_problem(record)
        if problem is not None:
            raise ValueError(f"records[{index}]: {problem}")
    return records


def label_of(record: Mapping[str, Any]) -> bool:
    """The record's label as a bool (0/1 accepted)."""
    return bool(_as_bool(record["label"]))


def load_feedback(path: Union[str, "os.PathLike[str]"]) -> List[Record]:
    """Read feedback records from a JSONL file (one JSON object per line).

    Blank lines are skipped. ``label`` (and ``flagged``) given as 0/1 are
    turned into bools, so every returned record's ``label`` is a bool.

    Parameters
    ----------
    path : str or os.PathLike
        The JSONL file.

    Returns
    -------
    list of dict
        The records in file order.

    Raises
    ------
    ValueError
        A line is not JSON, not an object, lacks a required field or has a
        wrong value; the message names the file, the line (1-based) and the
        field.
    """
    records: List[Record] = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{os.fspath(path)}, line {number}: not valid JSON ({exc.msg})") from None
            problem = _record_problem(record)
            if problem is not None:
                raise ValueError(f"{os.fspath(path)}, line {number}: {problem}")
            record["label"] = _as_bool(record["label"])
            if record.get("flagged") is not None:
                record["flagged"] = _as_bool(record["flagged"])
            records.append(record)
    return records
