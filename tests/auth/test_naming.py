"""Table tests of gpuhub.core.naming: usernames from IdP claims, container names."""

from __future__ import annotations

import itertools
import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuhub.core import naming
from gpuhub.core.naming import container_name, is_normalized_username, normalize_username, server_slug

DOCKER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
ESCAPED = re.compile(r"^(?P<prefix>[a-z0-9._-]+)--(?P<hash>[a-z2-7]{10})$")

# claim -> expected username; "<escaped:prefix>" = prefix + "--" + 10-char hash
USERNAMES = [
    ("alice", "alice"),
    ("bob_smith", "bob_smith"),
    ("kim.minsu", "kim.minsu"),
    ("kim-minsu", "kim-minsu"),
    ("20231234", "20231234"),  # student numbers are fine as they are
    ("a", "a"),
    ("a" * 32, "a" * 32),
    ("a" * 33, "<escaped:" + "a" * 20 + ">"),  # too long -> escaped, still <= 32
    ("Alice", "<escaped:alice>"),  # case is information: escaped
    ("ALICE", "<escaped:alice>"),
    ("Kim.Min-Su@GIST.ac.kr", "<escaped:kim.min-su-gist>"),
    ("kim.minsu@gist.ac.kr", "<escaped:kim.minsu-gist>"),
    ("김민수", "<escaped:gimminsu>"),  # Revised Romanization prefix
    ("홍길동@snu.ac.kr", "<escaped:honggildong-snu>"),
    ("이 서연", "<escaped:i-seoyeon>"),
    ("José", "<escaped:jose>"),
    ("Ａlice", "<escaped:alice>"),  # full-width A: not folded into 'Alice'
    ("user--foo", "<escaped:user-foo>"),  # '--' is reserved for escapes
    ("alice--hpcrayuxhr", "<escaped:alice-hpcrayuxhr>"),  # looks escaped: escaped again
    ("a__b", "<escaped:a-b>"),  # '__' is reserved for container names
    ("a..b", "<escaped:a-b>"),
    (".alice", "<escaped:alice>"),
    ("alice.", "<escaped:alice>"),
    ("-", "<escaped:u>"),
    ("..", "<escaped:u>"),
    ("山田", "<escaped:u>"),  # no readable ASCII: prefix 'u'
    ("a/b", "<escaped:a-b>"),
    ("a b", "<escaped:a-b>"),
    (" alice", "<escaped:alice>"),
    ("alice\n", "<escaped:alice>"),
]


@pytest.mark.parametrize("claim, expected", USERNAMES)
def test_normalize_username_table(claim, expected):
    name = normalize_username(claim)
    assert len(name) <= naming.USERNAME_MAX_LENGTH
    assert is_normalized_username(name)
    assert re.fullmatch(naming.USERNAME_PATTERN, name)
    if expected.startswith("<escaped:"):
        m = ESCAPED.match(name)
        assert m, name
        assert m["prefix"] == expected[len("<escaped:") : -1]
        assert not naming.is_safe_name(name)
    else:
        assert name == expected
        assert naming.is_safe_name(name)
        assert re.fullmatch(naming.SAFE_USERNAME_PATTERN, name)


def test_all_table_claims_map_to_distinct_names():
    claims = [c for c, _ in USERNAMES]
    names = [normalize_username(c) for c in claims]
    assert len(set(names)) == len(set(claims))


def test_case_variants_are_distinct_users():
    variants = {"alice", "Alice", "ALICE", "aLiCe", "Ａlice", "alice@gist.ac.kr", "Alice@gist.ac.kr"}
    assert len({normalize_username(v) for v in variants}) == len(variants)


def test_canonically_equivalent_unicode_is_the_same_user():
    composed = "김민수"
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    assert normalize_username(composed) == normalize_username(decomposed)


def test_deterministic_and_stable():
    # changing the function renames users: pin one value
    assert normalize_username("Alice") == "alice--hpcrayuxhr"
    assert normalize_username("김민수") == "gimminsu--e6d62sjoaw"


@pytest.mark.parametrize("bad", ["", None, 42, b"alice"])
def test_normalize_username_refuses_non_names(bad):
    with pytest.raises((ValueError, TypeError)):
        normalize_username(bad)


@given(st.text(min_size=1, max_size=60))
@settings(max_examples=400, deadline=None)
def test_any_claim_gives_a_valid_name(claim):
    name = normalize_username(claim)
    assert is_normalized_username(name)
    assert re.fullmatch(naming.USERNAME_PATTERN, name)
    assert DOCKER_NAME.match(container_name(name))
    # safe claims are kept; everything else is escaped
    assert (name == claim) == naming.is_safe_name(claim)


@given(st.lists(st.text(min_size=1, max_size=40), min_size=2, max_size=30, unique=True))
@settings(max_examples=200, deadline=None)
def test_no_collisions(claims):
    claims = list({unicodedata.normalize("NFC", c) for c in claims})
    assert len({normalize_username(c) for c in claims}) == len(claims)


# ---------------------------------------------------------------- containers

CONTAINERS = [
    (("alice", ""), "gpuhub-alice"),
    (("alice", "train"), "gpuhub-alice__train"),
    (("kim.minsu", "exp-1"), "gpuhub-kim.minsu__exp-1"),
    (("alice--hpcrayuxhr", ""), "gpuhub-alice--hpcrayuxhr"),  # a normalized (escaped) username is kept
]


@pytest.mark.parametrize("args, expected", CONTAINERS)
def test_container_name_table(args, expected):
    assert container_name(*args) == expected


def test_reliability_i3_user_server_collision():
    # user "user--foo" (escaped) vs user "user" with server "foo"
    assert container_name(normalize_username("user--foo")) != container_name("user", "foo")
    assert container_name("user--foo") != container_name("user", "foo")
    assert container_name("user__foo") != container_name("user", "foo")
    assert container_name("user", "foo") == "gpuhub-user__foo"


def test_unnormalized_hub_names_are_escaped_for_docker():
    # a hub username outside the gpuhub alphabet (e.g. created before gpuhub) still gets a valid name
    name = container_name("Alice@Example.org", "My Server!")
    assert DOCKER_NAME.match(name)
    user_part, server_part = name[len("gpuhub-") :].split("__")
    assert ESCAPED.match(user_part) and ESCAPED.match(server_part)


def test_server_slug():
    assert server_slug("train") == "train"
    assert ESCAPED.match(server_slug("a" * 23))
    assert len(server_slug("x" * 100)) <= naming.SERVER_NAME_MAX_LENGTH
    with pytest.raises(ValueError):
        server_slug("")


def test_names_fit_dns_label_length():
    longest = container_name("Z" * 200, "Y" * 200)
    assert len(longest) <= 63
    assert len(container_name("a" * 32, "b" * 22)) == 63


USERS = ["user", "user--foo", "user-foo", "user__foo", "User", "foo", "user.foo", "u", "김민수", "a" * 40]
SERVERS = ["", "foo", "Foo", "user", "--foo", "foo__bar", "b" * 30]


def test_container_names_are_injective_over_users_and_servers():
    pairs = list(itertools.product(USERS, SERVERS))
    names = {container_name(u, s) for u, s in pairs}
    assert len(names) == len(pairs)
    for name in names:
        assert DOCKER_NAME.match(name) and len(name) <= 63


@given(st.text(min_size=1, max_size=40), st.text(max_size=30), st.text(min_size=1, max_size=40), st.text(max_size=30))
@settings(max_examples=300, deadline=None)
def test_container_name_injective_property(u1, s1, u2, s2):
    n = lambda s: unicodedata.normalize("NFC", s)  # noqa: E731
    if (n(u1), n(s1)) != (n(u2), n(s2)):
        assert container_name(u1, s1) != container_name(u2, s2)


def test_prefix():
    assert container_name("alice", prefix="gpuhubtest1a2b3c") == "gpuhubtest1a2b3c-alice"
    assert container_name("alice", "x", prefix="hub-2") == "hub-2-alice__x"
    for bad in ("", "Hub", "a--b", "a_b", "-a", "a-"):
        with pytest.raises(ValueError):
            container_name("alice", prefix=bad)
