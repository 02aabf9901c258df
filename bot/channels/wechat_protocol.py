"""The WeChat Official Account callback protocol: signatures, safe-mode encryption and the
XML messages, with no I/O (the webhook and the API client live in ``wechat.py``).

- Signature: SHA-1 of the sorted strings (token, timestamp, nonce[, encrypted body]),
  compared in constant time.
- Safe mode: AES-256-CBC with the key ``base64(EncodingAESKey + "=")`` and its first 16
  bytes as IV; plaintext = 16 random bytes + 4-byte big-endian length + message + AppID,
  padded PKCS#7 to 32-byte blocks. AES comes from ``cryptography``.
- XML is parsed with ``defusedxml``: no DTDs, no entity expansion, no external resources.
Checked against WeChat's published sample (tests/fixtures/wechat).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
import time
from dataclasses import dataclass, field
from xml.etree.ElementTree import Element

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from defusedxml import ElementTree as SafeXml
from defusedxml.common import DefusedXmlException

BLOCK = 32  # WeChat pads to 32-byte blocks (PKCS#7 with k = 32)


class ProtocolError(ValueError):
    """A callback that is not genuine or not readable: refused, nothing stored."""


def signature(*parts: str) -> str:
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


def signature_matches(expected: str | None, *parts: str) -> bool:
    if not expected:
        return False
    return hmac.compare_digest(expected.lower().encode(), signature(*parts).encode())


class AesCrypto:
    def __init__(self, encoding_aes_key: str, app_id: str) -> None:
        if len(encoding_aes_key) != 43:
            raise ValueError("wechat.aes_key: the EncodingAESKey has 43 characters")
        self.key = base64.b64decode(encoding_aes_key + "=")
        self.app_id = app_id

    def _cipher(self) -> Cipher[modes.CBC]:
        return Cipher(algorithms.AES(self.key), modes.CBC(self.key[:16]))

    def decrypt(self, encrypted: str) -> str:
        try:
            raw = base64.b64decode(encrypted, validate=True)
            decryptor = self._cipher().decryptor()
            padded = decryptor.update(raw) + decryptor.finalize()
        except (ValueError, TypeError) as exc:
            raise ProtocolError(f"cannot decrypt: {exc}") from None
        pad = padded[-1] if padded else 0
        if not 1 <= pad <= BLOCK or padded[-pad:] != bytes([pad]) * pad:
            raise ProtocolError("bad padding")
        plain = padded[:-pad]
        if len(plain) < 20:
            raise ProtocolError("message too short")
        (length,) = struct.unpack(">I", plain[16:20])
        message, receiver = plain[20:20 + length], plain[20 + length:]
        if len(message) != length:
            raise ProtocolError("bad message length")
        if not hmac.compare_digest(receiver, self.app_id.encode()):
            raise ProtocolError("message is for another AppID")
        try:
            return message.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("message is not UTF-8") from None

    def encrypt(self, message: str, random_prefix: bytes | None = None) -> str:
        body = message.encode("utf-8")
        plain = (random_prefix or os.urandom(16)) + struct.pack(">I", len(body)) + body \
            + self.app_id.encode()
        pad = BLOCK - len(plain) % BLOCK
        encryptor = self._cipher().encryptor()
        raw = encryptor.update(plain + bytes([pad]) * pad) + encryptor.finalize()
        return base64.b64encode(raw).decode()


# --- XML -----------------------------------------------------------------------------------

def parse_xml(body: bytes) -> dict[str, str]:
    """A callback's top-level fields; refuses DTDs, entities and anything not UTF-8."""
    try:
        body.decode("utf-8")
        root: Element = SafeXml.fromstring(body, forbid_dtd=True, forbid_entities=True,
                                           forbid_external=True)
    except (DefusedXmlException, SyntaxError, UnicodeDecodeError, ValueError,
            LookupError) as exc:  # LookupError: an encoding Python does not know
        raise ProtocolError(f"unreadable XML: {type(exc).__name__}") from None
    if root.tag != "xml":
        raise ProtocolError("not a WeChat message")
    return {child.tag: (child.text or "") for child in root}


def _cdata(text: str) -> str:
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def text_reply_xml(to_user: str, from_user: str, content: str, now: int | None = None) -> str:
    """A passive reply (a text message) in the callback's response."""
    return ("<xml>"
            f"<ToUserName>{_cdata(to_user)}</ToUserName>"
            f"<FromUserName>{_cdata(from_user)}</FromUserName>"
            f"<CreateTime>{int(now if now is not None else time.time())}</CreateTime>"
            "<MsgType><![CDATA[text]]></MsgType>"
            f"<Content>{_cdata(content)}</Content>"
            "</xml>")


def encrypted_reply_xml(crypto: AesCrypto, token: str, reply: str, nonce: str,
                        now: int | None = None) -> str:
    timestamp = str(int(now if now is not None else time.time()))
    encrypted = crypto.encrypt(reply)
    return ("<xml>"
            f"<Encrypt>{_cdata(encrypted)}</Encrypt>"
            f"<MsgSignature>{_cdata(signature(token, timestamp, nonce, encrypted))}</MsgSignature>"
            f"<TimeStamp>{timestamp}</TimeStamp>"
            f"<Nonce>{_cdata(nonce)}</Nonce>"
            "</xml>")


@dataclass(frozen=True)
class WechatMessage:
    """What a callback says, channel-neutral enough for the pipeline."""

    open_id: str
    account: str  # the Official Account's own id (ToUserName), the sender of replies
    kind: str  # text | image | event | other
    text: str
    external_id: str
    event: str | None = None
    attachments: tuple[dict[str, str], ...] = field(default_factory=tuple)


def read_message(fields: dict[str, str]) -> WechatMessage:
    open_id, account = fields.get("FromUserName", ""), fields.get("ToUserName", "")
    msg_type = fields.get("MsgType", "")
    if not open_id or not msg_type:
        raise ProtocolError("message without sender or type")
    # MsgId identifies a message; events have none, WeChat's advice is sender + time.
    external_id = fields.get("MsgId") or f"{open_id}:{fields.get('CreateTime', '')}:" \
        f"{fields.get('Event', '')}"
    if msg_type == "text":
        return WechatMessage(open_id, account, "text", fields.get("Content", ""), external_id)
    if msg_type == "image":
        attachment = {"type": "photo", "media_id": fields.get("MediaId", ""),
                      "url": fields.get("PicUrl", ""),
                      "name": f"photo-{fields.get('MsgId', 'wechat')}.jpg"}
        return WechatMessage(open_id, account, "image", "📎 " + attachment["name"],
                             external_id, attachments=(attachment,))
    if msg_type == "event":
        event = fields.get("Event", "").lower()
        return WechatMessage(open_id, account, "event", "", external_id, event=event)
    return WechatMessage(open_id, account, "other", "", external_id)
