# Sourced by the project's scripts: where caches live and how to build fast.
# Caches are kept outside the repository, keyed by version, so a clean clone on
# the same machine reuses them and a fresh machine rebuilds them.
RALPH_CACHE="${RALPH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ralph-deploy}"
export RALPH_CACHE
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$RALPH_CACHE/target}"
if command -v mold >/dev/null 2>&1; then
  case " ${RUSTFLAGS:-} " in
    *fuse-ld*) ;;
    *) export RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-fuse-ld=mold" ;;
  esac
fi
