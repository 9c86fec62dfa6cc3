"""The profiles shipped with the package (``entropy/profiles/<observer>/<name>.safetensors``), and decoding a
container by the profile id in its header: what every receiver of a token file shares."""

from __future__ import annotations

from pathlib import Path

from tokencodec.entropy.bitstream import TokenBitstreamError, TokenCodecProfile, decode_tokens, read_header

PROFILES = Path(__file__).resolve().parent / "profiles"


def shipped_profiles(observer: str) -> dict[str, Path]:
    """{step name: file} of the profiles shipped for an observer."""
    return {p.stem: p for p in sorted((PROFILES / observer).glob("*.safetensors"))}


def find_profile(profile_id: str) -> tuple[TokenCodecProfile, Path]:
    """The shipped profile with this id (hex), or TokenBitstreamError listing what is there."""
    seen = []
    for path in sorted(PROFILES.rglob("*.safetensors")):
        profile = TokenCodecProfile.load(path)
        if profile.id.hex() == profile_id:
            return profile, path
        seen.append(f"{path.parent.name}/{path.stem} ({profile.id.hex()})")
    raise TokenBitstreamError(f"no shipped profile has id {profile_id}; shipped: {', '.join(seen) or 'none'}")


def decode_container(data: bytes, name: str = "<bytes>"):
    """(header dict, DecodedTokens, profile path) of a token container, by the shipped profile its header names."""
    head = read_header(data, name)
    profile, where = find_profile(head["profile"])
    return head, decode_tokens(data, profile, name), where


__all__ = ["PROFILES", "decode_container", "find_profile", "shipped_profiles"]
