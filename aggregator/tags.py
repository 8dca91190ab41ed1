"""What a Forward tag tells of its records: the service of a record that names none, and the
container of a tailed kubelet log.

DESIGN §2: a record without a ``service`` takes the tag's last dot-separated part. Fluent Bit
(``Tag kube.*``) and Fluentd (``tag kubernetes.*``) tag a tailed kubelet log with its path,
whose last part is always ``log``: such a tag names the pod's owner instead, and the container.
Both the flush (:mod:`aggregator.batch`, on a dictionary's few distinct tags) and the decoding of
a tag that is not UTF-8 (:mod:`aggregator.decode`) read tags here.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from shipper.discover import pod_owner_name

#: A DNS label, as Kubernetes names a namespace or a container (RFC 1123, 63 characters at most).
_DNS_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"

#: The tag Fluent Bit (``Tag kube.*``) or Fluentd (``tag kubernetes.*``) gives a tailed kubelet
#: log of ``/var/log/containers``: any prefix, then its path with ``.`` for ``/``, ending in the
#: full file name the kubelet gives it, ``<pod>_<namespace>_<container>-<64 hex id>.log``. Its
#: last part is ``log`` whatever the pod: the pod's owner names the service instead. Only this
#: exact shape: any other tag keeps the DESIGN §2 rule (its last dot-separated part). Matched on
#: what follows the tag's last ``var.log.containers.`` (:func:`kubelet_log`): a regex searching
#: the whole tag for it took time quadratic in the tag's length, a client's to choose.
_KUBELET_LOG_DIR = "var.log.containers."
_KUBELET_LOG_FILE = re.compile(
    rf"(?P<pod>{_DNS_LABEL}(?:\.{_DNS_LABEL})*)_(?P<ns>{_DNS_LABEL})_"
    rf"(?P<container>{_DNS_LABEL})-(?P<id>[0-9a-f]{{64}})\.log"
)


class KubeletLog(NamedTuple):
    """What the tag of a tailed kubelet log tells of its container."""

    namespace: str
    pod: str
    container: str
    container_id: str

    @property
    def container_name(self) -> str:
        """As logq-shipper and :mod:`.clientmeta` name a pod's container."""
        return f"{self.namespace}/{self.pod}/{self.container}"


def kubelet_log(tag: str | None) -> KubeletLog | None:
    """The container of a tailed kubelet log's tag (:data:`_KUBELET_LOG_FILE`), else None."""
    if tag is None or not tag.endswith(".log"):
        return None
    at = tag.rfind(_KUBELET_LOG_DIR)
    m = _KUBELET_LOG_FILE.fullmatch(tag, at + len(_KUBELET_LOG_DIR)) if at >= 0 else None
    if m is None:
        return None
    return KubeletLog(m.group("ns"), m.group("pod"), m.group("container"), m.group("id"))


def tag_service(tag: str | None) -> str | None:
    """The service a record without one takes from its tag: the pod's owner for a tailed
    kubelet log (:func:`kubelet_log`), else the tag's last dot-separated part."""
    if tag is None:
        return None
    log = kubelet_log(tag)
    return pod_owner_name(log.pod) if log else tag.rpartition(".")[2]


#: The service a tailed ``*.log`` file's path tag gives its records: its last part.
PATH_TAG_SERVICE = "log"


def file_path_tag(tag: str) -> bool:
    """Whether ``tag`` is a tailed file's path whose last part, ``log``, would be the service:
    Fluent Bit's ``Tag ecs.*`` on ``/var/lib/docker/containers/*/*.log``, ``Tag kube.*`` on
    ``/var/log/pods``, Fluentd's ``tag docker.*`` (the path with ``.`` for ``/``; a folder and a
    file name at least, so ``app.log`` is a tag chosen as it is). Every container tailed so
    lands in one service, ``log``, unless its records name theirs."""
    return (
        tag.endswith("." + PATH_TAG_SERVICE)
        and tag.count(".") >= 2
        and tag_service(tag) == PATH_TAG_SERVICE
    )
