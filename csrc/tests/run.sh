#!/usr/bin/env bash
# Build and run the C tests of the mapping layer.
#
#   bash csrc/tests/run.sh          # native, then wine
#   bash csrc/tests/run.sh native   # cc against mm_posix.c
#   bash csrc/tests/run.sh wine     # x86_64-w64-mingw32-gcc against mm_win32.c, run under wine
#
# Build outputs, scratch files and the wine prefix live in one temp dir, removed on exit.
# Installs nothing: a missing compiler or wine is an error that says what is missing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
csrc="$(cd "$here/.." && pwd)"
what="${1:-all}"

case "$what" in
    all|native|wine) ;;
    *) echo "usage: $0 [native|wine]" >&2; exit 2 ;;
esac

work="$(mktemp -d "${TMPDIR:-/tmp}/mmarray-ctest.XXXXXX")"
wineserver_bin=""
cleanup() {
    if [[ -n "$wineserver_bin" && -d "$work/wineprefix" ]]; then
        WINEPREFIX="$work/wineprefix" "$wineserver_bin" -k >/dev/null 2>&1 || true
        WINEPREFIX="$work/wineprefix" "$wineserver_bin" -w >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

warn=(-std=c99 -Wall -Wextra -Werror -O1)

run_native() {
    local cc="${CC:-cc}"
    if ! command -v "$cc" >/dev/null 2>&1; then
        echo "run.sh: C compiler '$cc' not found" >&2
        return 1
    fi
    if [[ ! -f "$csrc/mm_posix.c" ]]; then
        echo "run.sh: $csrc/mm_posix.c is missing" >&2
        return 1
    fi
    local flags=("${warn[@]}" -g -D_FILE_OFFSET_BITS=64 -D_GNU_SOURCE)
    # Sanitizers when this compiler can build and run with them.
    printf 'int main(void) { return 0; }\n' >"$work/probe.c"
    if "$cc" -fsanitize=address,undefined -fno-sanitize-recover=all "$work/probe.c" \
            -o "$work/probe" >/dev/null 2>&1 && "$work/probe" >/dev/null 2>&1; then
        flags+=(-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
    else
        echo "run.sh: sanitizers unavailable, building without them"
    fi
    echo "== native: $cc ${flags[*]}"
    # (errexit does not apply inside a function called as `f || ...`: check each step.)
    "$cc" "${flags[@]}" -I"$csrc" "$here/test_mm.c" "$csrc/mm_posix.c" "$csrc/mm_guard.c" \
        "$csrc/mm_scan.c" -o "$work/test_mm" -lpthread \
        || { echo "run.sh: native build failed" >&2; return 1; }
    mkdir -p "$work/scratch-native" || return 1
    # The fault guard's tests need SIGBUS for themselves: AddressSanitizer would otherwise
    # keep its own handler in front of the guard's.
    ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}handle_sigbus=0:allow_user_segv_handler=1" \
        "$work/test_mm" "$work/scratch-native" || return 1
    # The guard's internals (mm_guard.c included, with a test hook): POSIX only.
    "$cc" "${flags[@]}" -I"$csrc" "$here/test_guard_internal.c" "$csrc/mm_posix.c" \
        "$csrc/mm_scan.c" -o "$work/test_guard_internal" -lpthread \
        || { echo "run.sh: native build of test_guard_internal failed" >&2; return 1; }
    "$work/test_guard_internal"
}

find_wine() {
    local c
    for c in wine64 wine /usr/lib/wine/wine64 /usr/lib64/wine/wine64; do
        if command -v "$c" >/dev/null 2>&1; then
            command -v "$c"
            return 0
        fi
    done
    return 1
}

run_wine() {
    local mingw="${MINGW_CC:-x86_64-w64-mingw32-gcc}"
    if ! command -v "$mingw" >/dev/null 2>&1; then
        echo "run.sh: cross compiler '$mingw' not found (Debian: gcc-mingw-w64-x86-64)" >&2
        return 1
    fi
    local wine
    if ! wine="$(find_wine)"; then
        echo "run.sh: wine not found (looked for wine64, wine, /usr/lib/wine/wine64)" >&2
        return 1
    fi
    local flags=("${warn[@]}" -g -static)
    echo "== wine: $mingw ${flags[*]}; runner $wine"
    "$mingw" "${flags[@]}" -I"$csrc" "$here/test_mm.c" "$csrc/mm_win32.c" "$csrc/mm_scan.c" -o "$work/test_mm.exe" \
        || { echo "run.sh: mingw build failed" >&2; return 1; }

    # The wineserver that belongs to this wine, to stop it before the prefix is removed.
    local dir
    dir="$(dirname "$(readlink -f "$wine")")"
    if [[ -x "$dir/wineserver" ]]; then
        wineserver_bin="$dir/wineserver"
    elif command -v wineserver >/dev/null 2>&1; then
        wineserver_bin="$(command -v wineserver)"
    fi

    export WINEPREFIX="$work/wineprefix" WINEDEBUG=-all WINEARCH=win64
    export WINEDLLOVERRIDES="mscoree,mshtml=" # no Mono/Gecko install prompts
    unset DISPLAY WAYLAND_DISPLAY
    mkdir -p "$WINEPREFIX" "$work/scratch-wine" || return 1
    # First use of a prefix: create it now, quietly, so its output does not mix with the tests.
    "$wine" wineboot --init </dev/null >"$work/wineboot.log" 2>&1 || {
        echo "run.sh: wineboot failed:" >&2
        tail -n 20 "$work/wineboot.log" >&2
        return 1
    }
    if [[ -n "$wineserver_bin" ]]; then
        "$wineserver_bin" -w || true
    fi
    # Z: is the Unix root in a wine prefix; pass the scratch dir as a Windows path.
    local scratch="Z:${work//\//\\}\\scratch-wine"
    "$wine" "$work/test_mm.exe" "$scratch" </dev/null
}

rc=0
if [[ "$what" == all || "$what" == native ]]; then
    run_native || rc=1
fi
if [[ "$what" == all || "$what" == wine ]]; then
    run_wine || rc=1
fi
if [[ $rc -ne 0 ]]; then
    echo "run.sh: FAILED" >&2
fi
exit $rc
