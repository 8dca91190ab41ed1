"""The log lines an Envoy data plane writes about itself, told apart from access lines.

An Envoy sidecar's container prints more than access lines: Envoy's own log, the agent that
starts it (Istio's pilot-agent, consul-dataplane, kuma-dp, Emissary's entrypoint and diagd) and
its warnings. Those lines do not parse as access lines and are kept in ``container_logs`` like
any other, but they are no access line that failed to parse either: counting them in
``logq_aggregator_envoy_parse_failures_total`` would make the metric rise on every xDS
reconnect, and an alert on it useless. :func:`diagnostic` tells them by the start of the line,
in the shapes these programs print by default:

* Envoy's default log format ``[%Y-%m-%d %T.%e][%t][%l][%n] ...``:
  ``[2024-05-01 12:00:00.123][14][warning][config] [source/...:123] message``;
* Istio's (pilot-agent, and the format it gives Envoy) and zap's console encoder (kuma-dp):
  an RFC 3339 time, a tab, a level, a tab: ``2024-05-01T12:00:00.123456Z<TAB>info<TAB>...``;
  with ``--log_as_json`` (Istio) zap's JSON encoder, whose first key is the level, with a
  ``msg``: ``{"level":"info","time":"2024-05-01T12:00:00.123456Z","scope":"ads","msg":"..."}``;
* hclog (consul-dataplane): ``2024-05-01T12:00:00.123Z [INFO]  consul-dataplane: ...``, and
  its JSON (keys sorted, so ``@level`` first, with ``@message``):
  ``{"@level":"info","@message":"...",...}``;
* logrus's text format (Emissary's entrypoint): ``time="2024-05-01 12:00:00" level=info ...``;
* Emissary's diagd: ``2024-05-01 12:00:00 diagd 3.9.1 [P15TMainThread] INFO: ...``.

Kuma's default format for TCP traffic is also told apart (``[%START_TIME%] %RESPONSE_FLAGS%
%KUMA_MESH% <source>(<service>)-><upstream>(<service>) took %DURATION%ms, sent N bytes,
received: N bytes``): an access line, but of a connection, with no HTTP response for an
``envoy_access`` row, so no format can ever take it and counting it would keep the metric up
for good on every TCP service (on Kubernetes no label can opt a pod out).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

_DATE = r"\d{4}-\d{2}-\d{2}"
_LEVEL = r"(?:trace|debug|info|warn|warning|error|critical|fatal|dpanic|panic)"
DIAGNOSTIC = "|".join(
    (
        rf"^\[{_DATE} \d{{2}}:\d{{2}}:\d{{2}}\.\d{{3}}\]\[\d+\]\[{_LEVEL}\]",
        rf"^{_DATE}T\d{{2}}:\d{{2}}:\d{{2}}(?:\.\d+)?(?:Z|[+-]\d{{2}}:?\d{{2}})\t{_LEVEL}\t",
        # JSON: also a key no access line has (a failed JSON access line with a "level" key
        # first must still be counted).
        rf'^\{{"level":"{_LEVEL}",.*"msg":',
        rf'^\{{"@level":"{_LEVEL}",.*"@message":',
        rf"^{_DATE}T\d{{2}}:\d{{2}}:\d{{2}}(?:\.\d+)?(?:Z|[+-]\d{{4}}) \[{_LEVEL}\] ",
        rf'^time="[^"]*" level={_LEVEL} ',
        rf"^{_DATE} \d{{2}}:\d{{2}}:\d{{2}} diagd ",
        rf"^\[{_DATE}T[\d:.]+Z\] \S+ \S+ \S*->\S* took \S+ms, sent \d+ bytes, received: \d+ bytes",
    )
)


def diagnostic(lines: pa.Array) -> pa.Array:
    """Which ``lines`` are a data plane's own log lines or Kuma's TCP lines (module docstring);
    NULL lines are not."""
    return pc.fill_null(pc.match_substring_regex(lines, DIAGNOSTIC, ignore_case=True), False)
