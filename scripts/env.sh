# Shared settings of the project's scripts (sourced, not run).
# Build output and caches live outside the clone, so repeated runs on one machine are incremental.
export ATMOSPHERE_CACHE="${ATMOSPHERE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/atmosphere}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ATMOSPHERE_CACHE/target}"
