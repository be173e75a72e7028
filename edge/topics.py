"""Every MQTT topic string of the v1 API, built from the configured prefix, store and device ids."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from edge.config import Config, OtaConfig, topic_prefix_problem

COMMANDS: tuple[str, ...] = ("pause", "resume", "snapshot", "reload")
REPLY_SUFFIX = "reply"  # MQTT 3.1.1 has no response topic: replies go to `.../cmd/{name}/reply`


def _check_level(what: str, value: str) -> str:
    if not value or any(c in value for c in "/+#\0"):
        raise ValueError(f"{what} {value!r} must be one non-empty topic level without '/', '+' or '#'")
    return value


@dataclass(frozen=True)
class TopicParts:
    """What a device topic says: store, device, the kind (`status`, `alerts`, `snapshots`, ...) and the rest."""

    store: str
    device: str
    kind: str  # status | alerts | snapshots | stats | model/state | cmd
    arg: str | None = None  # the alert id of a snapshot, the name of a command


@dataclass(frozen=True)
class Topics:
    """Topics of one device: `{prefix}/{store}/{device}/...`. The prefix may have several levels."""

    prefix: str
    store: str
    device: str

    def __post_init__(self) -> None:
        why = topic_prefix_problem(self.prefix)
        if why is not None:
            raise ValueError(f"topic prefix {self.prefix!r} {why}")
        _check_level("store", self.store)
        _check_level("device", self.device)

    @classmethod
    def from_config(cls, cfg: Config) -> Topics:
        return cls(cfg.mqtt.topic_prefix, cfg.device.store, cfg.device.id)

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.store}/{self.device}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def alerts(self) -> str:
        return f"{self.base}/alerts"

    def snapshot(self, alert_id: str) -> str:
        return f"{self.base}/snapshots/{_check_level('alert id', alert_id)}"

    @property
    def stats(self) -> str:
        return f"{self.base}/stats"

    @property
    def model_state(self) -> str:
        return f"{self.base}/model/state"

    def cmd(self, name: str) -> str:
        return f"{self.base}/cmd/{_check_level('command', name)}"

    @property
    def cmd_filter(self) -> str:
        """The device's command subscription: one level only, so its own `/reply` messages never come back."""
        return f"{self.base}/cmd/+"

    def cmd_reply(self, cmd_topic: str) -> str:
        """Where a command is answered when the request has no MQTT 5 response topic."""
        return f"{cmd_topic}/{REPLY_SUFFIX}"

    def takes_replies(self, topic: str) -> bool:
        """Whether a command's MQTT 5 response topic may be used as asked: not a topic this device publishes its
        own messages to (a reply there would reach alert and status subscribers) and not a command topic (the
        reply would come back as a command)."""
        return (topic not in self.device_topics() and not topic.startswith(f"{self.base}/snapshots/")
                and self.command_name(topic) is None)

    def command_name(self, topic: str) -> str | None:
        """The command name of a topic under `cmd/`, or None for any other topic."""
        head = f"{self.base}/cmd/"
        if topic.startswith(head) and "/" not in topic[len(head):] and len(topic) > len(head):
            return topic[len(head):]
        return None

    def release_topics(self, ota: OtaConfig) -> tuple[str, ...]:
        """The model release topics to subscribe to, with `{store}`, `{device}` and `{prefix}` filled in."""
        out: list[str] = []
        for t in ota.release_topics:
            topic = t.format(store=self.store, device=self.device, prefix=self.prefix)
            if topic not in out:
                out.append(topic)
        return tuple(out)

    def device_topics(self) -> tuple[str, ...]:
        """The fixed topics this device publishes to (snapshots are per alert; see `snapshot`)."""
        return (self.status, self.alerts, self.stats, self.model_state)


def release_topic(store: str | None, prefix: str = "shelfscout") -> str:
    """The retained release topic for one store, or for the whole fleet when `store` is None."""
    return f"{prefix}/fleet/model/release" if store is None else f"{prefix}/{_check_level('store', store)}/model/release"


def subscriber_filters(prefix: str = "shelfscout", store: str | None = None, device: str | None = None,
                       kinds: Iterable[str] = ("status", "alerts", "snapshots/+", "stats", "model/state")
                       ) -> list[str]:
    """Subscription filters for a backend or the `alerts` viewer: one store/device or all (`+`)."""
    s = _check_level("store", store) if store else "+"
    d = _check_level("device", device) if device else "+"
    return [f"{prefix}/{s}/{d}/{k}" for k in kinds]


def parse_topic(topic: str, prefix: str = "shelfscout") -> TopicParts | None:
    """Split a device topic into its parts; None if it is not one of the v1 device topics."""
    head = prefix + "/"
    if not topic.startswith(head):
        return None
    levels = topic[len(head):].split("/")
    if len(levels) < 3:
        return None
    store, device, rest = levels[0], levels[1], levels[2:]
    if rest in (["status"], ["alerts"], ["stats"]):
        return TopicParts(store, device, rest[0])
    if rest == ["model", "state"]:
        return TopicParts(store, device, "model/state")
    if len(rest) == 2 and rest[0] == "snapshots":
        return TopicParts(store, device, "snapshots", rest[1])
    if len(rest) == 2 and rest[0] == "cmd":
        return TopicParts(store, device, "cmd", rest[1])
    return None
