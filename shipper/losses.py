"""Why a tailer may have lost lines: the ``reason`` label of ``logq_shipper_files_lost_total``.

Kept apart from :mod:`shipper.tailer` (which imports much) so that :mod:`shipper.metrics`, imported
early, can name them.
"""

LOSS_REASONS = (
    "deleted_unread",
    "truncated_without_copy",
    "truncated_in_place",
    "pin_limit",
    "rotated_unseen",
    "removed_while_down",
    "rotated_then_deleted",
)
"""Why lines may have been lost (the ``reason`` label of ``logq_shipper_files_lost_total``):
a file known from the checkpoint was gone at start (``deleted_unread``: rotated away and deleted
while the shipper was down, and no ``.gz`` of it shows it was read to its end; or its container
or pod was removed meanwhile with bytes the shipper had seen and not shipped, see
:mod:`shipper.removed`); a container or pod removed while the shipper was down after all it
had seen was shipped (``removed_while_down``: lines written after the shipper stopped, if any,
are lost; a possible loss); a file renamed away by a rotation before the shipper stopped,
read to its size at the stop and deleted while the shipper was down, of a source whose writer
may still have appended to it after the stop (``rotated_then_deleted``: a ``--path`` or CRI
file; a possible loss; a Docker json-file source's counts nothing, see
:meth:`shipper.resume.Resume._rotated_then_deleted`); a file truncated in place
(copytruncate) with no copy to finish from, while lines we had not read were in it
(``truncated_without_copy``: lost for sure), or after we had read all we saw
(``truncated_in_place``: lines written between our last look and the truncation, if any, are
lost; Docker ``max-file=1`` truncates its file at every rotation; also a file found replaced at
its checkpoint when opened, see :meth:`shipper.resume.Resume._verified`); the source fell more than
:data:`~shipper.pinning.MAX_PINNED_FILES` rotations behind, or the process reached its descriptor
budget (:func:`shipper.fd_budget.pin_budget`), so files deleted before it catches up are never
read; the file that was live at the last check is gone already (see
:meth:`shipper.pinning.Pinning._check_overrun`), so files may have been rotated in and gone
between two checks, never opened; or a compressed copy found at start that no checkpoint knew
held the next parts of a line open in a file read again from its compressed copy (see
:meth:`shipper.split_lines.SplitLines._next_parts_unseen`)."""
