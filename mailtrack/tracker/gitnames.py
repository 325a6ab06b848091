"""May a git tree hold this name? The one answer, as git's own `fsck` gives it.

A tree entry that `git fsck` flags makes the whole branch fail `git fsck --strict`, and a remote
with `receive.fsckObjects` refuses every push of it, for ever. git's rules (fsck.c `fsck_tree`,
path.c `is_ntfs_dot*`, utf8.c `is_hfs_dot*`) refuse, besides "", ".", ".." and any "/":

- `.git` in any case, also as its NTFS 8.3 short name `git~1`, followed by any run of dots and
  spaces (NTFS drops them) or by an alternate data stream (`.git::$INDEX_ALLOCATION`), and in
  every segment between backslashes (a separator on Windows);
- `.git` with HFS+ ignorable code points anywhere in it (U+200C, U+FEFF...: HFS+ drops them);
- the same look-alikes of `.gitmodules`, `.gitattributes`, `.gitignore` and `.mailmap`, whose NTFS
  short names are `gitmod~1`-`~4` or `gi7eba~N`, `gitatt~N`/`gi7d29~N`, `gitign~N`/`gi250a~N`,
  `mailma~N`/`maba30~N` (fsck parses such blobs as config files, or refuses them as symlinks:
  nothing of ours is one, so we write none of them);
- a name longer than 4096 bytes (`largePathname`, git 2.41 and later).

dulwich's `validate_path_element_ntfs` and `validate_path_element_hfs` answer for `.git` itself
(used below); they know nothing of the other files git treats specially, which are checked here.
"""

from __future__ import annotations

from dulwich.index import HFS_IGNORABLE_CHARS, validate_path_element_hfs, validate_path_element_ntfs

MAX_TREE_NAME = 4096  # bytes: fsck's largePathname limit (`max_tree_entry_len`, git 2.41 and later)
# The files git gives a meaning in a tree (besides .git), with their NTFS fall-back short-name prefix.
SPECIAL = (("gitmodules", "gi7eba"), ("gitattributes", "gi7d29"), ("gitignore", "gi250a"), ("mailmap", "maba30"))


def _ntfs_special(name: str, needle: str, short: str) -> bool:
    """git's is_ntfs_dot_generic: `.<needle>`, `<needle[:6]>~1`-`~4`, or a fall-back short name
    (`<short[:k]>~N` with digits up to the eighth character, k <= 6), then only dots and spaces up
    to the end or to an alternate data stream (`:`). Characters are compared as ASCII, as git does."""
    if name[:1] == "." and name[1 : len(needle) + 1].lower() == needle:
        rest = name[len(needle) + 1 :]
    elif name[:6].lower() == needle[:6] and name[6:7] == "~" and name[7:8] in ("1", "2", "3", "4"):
        rest = name[8:]
    else:
        tilde = name.find("~", 0, 7)
        if tilde < 0 or name[:tilde].lower() != short[:tilde] or name[tilde + 1 : tilde + 2] not in tuple("123456789"):
            return False
        if not all(c in "0123456789" for c in name[tilde + 2 : 8]) or len(name) < 8:
            return False
        rest = name[8:]
    return rest.partition(":")[0].strip(". ") == ""


def _hfs_special(name: str, needle: str) -> bool:
    """git's is_hfs_dot_generic: `.<needle>` in any case once HFS+ ignorable code points are dropped."""
    return "".join(c for c in name if ord(c) not in HFS_IGNORABLE_CHARS).lower() == "." + needle


def tree_name_problem(name: str) -> str:
    """Why a tree entry may not be called `name` (one path element); "" when git accepts it."""
    if name in ("", ".", ".."):
        return f"'{name}' is no file name"
    if "/" in name or "\0" in name:
        return f"'{name}' holds a path separator or a NUL"
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) > MAX_TREE_NAME:
        return f"a file name of {len(encoded)} bytes (git takes at most {MAX_TREE_NAME})"
    if not validate_path_element_ntfs(encoded) or not validate_path_element_hfs(encoded):
        return f"'{name}' is .git (or no name at all) to git on NTFS or HFS+"
    for segment in name.split("\\"):  # git checks each segment after a backslash too
        for needle, short in SPECIAL:
            if _ntfs_special(segment, needle, short) or _hfs_special(segment, needle):
                return f"'{name}' is what git reads as .{needle}"
    return ""
