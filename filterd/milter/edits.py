"""Header edits of a verdict, as milter actions on the message Postfix holds.

The content pipeline describes its changes as a :class:`HeaderEdits` relative to the
message it saw (fields removed or replaced by index, fields added on top, fields
inserted before another). The content filter rewrites the bytes; a milter cannot, it
asks the MTA to edit its copy:

- a field the verdict removes and adds again under the same name (amavisd-new's
  "remove existing spam headers", then its own ``X-Spam-Status``) becomes one
  SMFIR_CHGHEADER of the outside copy: the message keeps one field of that name, ours;
- other replacements (the tagged Subject) are SMFIR_CHGHEADER in place, removals a
  SMFIR_CHGHEADER with an empty value;
- new fields are SMFIR_ADDHEADER, in the top-down order the content filter writes them;
- fields inserted before another (header_checks PREPEND) are SMFIR_INSHEADER there.

CHGHEADER counts fields of one name from 1, and a deletion may renumber the fields of
that name after it, so changes go out last field first.
"""

from __future__ import annotations

from filterd.content.message import HeaderEdits, Message
from filterd.milter import protocol

#: Longest header line written before it is folded (RFC 5322's recommendation).
FOLD_AT = 78


def fold(value: str) -> str:
    """Fold a header value at spaces so no line exceeds FOLD_AT (``\\n\\t`` between lines,
    as libmilter documents folded header values)."""
    value = value.replace("\r", " ").replace("\n", " ")
    if len(value) <= FOLD_AT:
        return value
    lines: list[str] = []
    current = ""
    for word in value.split(" "):
        if current and len(current) + 1 + len(word) > FOLD_AT:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    lines.append(current)
    return "\n\t".join(lines)


def _split(line: str) -> tuple[str, str]:
    name, _, value = line.partition(":")
    return name.strip(), value.strip(" \t")


def header_actions(msg: Message, edits: HeaderEdits, leading_space: bool, may_change: bool,
                   may_add: bool) -> list[bytes]:
    """The milter actions that make Postfix's copy of ``msg`` what ``edits.apply`` makes.

    ``leading_space``: SMFIP_HDR_LEADSPC was agreed, so values carry their own leading
    space. ``may_change``/``may_add``: SMFIF_CHGHDRS/SMFIF_ADDHDRS were agreed; without
    them those edits cannot be made and are left out.
    """
    lead = " " if leading_space else ""
    fields = msg.header_fields
    occurrence: list[int] = []
    seen: dict[str, int] = {}
    for name, _ in fields:
        key = name.lower()
        seen[key] = seen.get(key, 0) + 1
        occurrence.append(seen[key])

    changes: dict[int, str | None] = dict(edits.replace)  # field index -> new line or None
    removed_by_name: dict[str, list[int]] = {}
    for index in sorted(changes):
        if changes[index] is None:
            removed_by_name.setdefault(fields[index][0].lower(), []).append(index)
    inserts: dict[int, list[str]] = {i: list(lines) for i, lines in edits.insert.items()}
    added: list[str] = []
    for line in reversed(edits.prepend):  # top-down, as the content filter writes them
        name, _ = _split(line)
        reuse = removed_by_name.get(name.lower())
        if reuse and may_change:
            changes[reuse.pop(0)] = line  # replace the outside copy instead of adding another
        else:
            added.append(line)

    out: list[bytes] = []
    if may_change:
        for index in sorted(changes, reverse=True):
            orig_name = fields[index][0]
            new = changes[index]
            if new is None:
                out.append(protocol.encode_chgheader(occurrence[index], orig_name, ""))
                continue
            name, value = _split(new)
            if name.lower() == orig_name.lower():
                out.append(protocol.encode_chgheader(occurrence[index], orig_name, lead + fold(value)))
            else:  # a REPLACE that renames the field: remove it, insert the new one there
                out.append(protocol.encode_chgheader(occurrence[index], orig_name, ""))
                inserts.setdefault(index, []).append(new)
    if may_add:
        for index in sorted(inserts, reverse=True):
            for line in reversed(inserts[index]):
                name, value = _split(line)
                out.append(protocol.encode_insheader(index, name, lead + fold(value)))
        for line in added:
            name, value = _split(line)
            out.append(protocol.encode_addheader(name, lead + fold(value)))
    return out
