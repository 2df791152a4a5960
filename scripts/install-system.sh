#!/usr/bin/env bash
# Install the system packages pglocalai needs: a PostgreSQL server, PL/Python 3, pgvector, the
# PGXS build files, and python3-venv. Debian 12 and 13 only.
#
# Fast to re-run: each step first checks whether its result is already there (dpkg status,
# vector.control), so a machine that has everything costs about a second and touches nothing.
#
#   Debian 13: postgresql-17, postgresql-plpython3-17, postgresql-17-pgvector, postgresql-server-dev-17
#   Debian 12: postgresql-15, postgresql-plpython3-15, postgresql-server-dev-15, and pgvector
#              built with PGXS from Debian's trixie source package (bookworm does not package it)
#   PGLOCALAI_PG_MAJOR=N: the same for server N (e.g. one from PGDG), pgvector packaged or built
# and python3-venv always (the runtime's environment is built with /usr/bin/python3).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

export DEBIAN_FRONTEND=noninteractive
APT_UPDATED=0

is_installed() {
    [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}

has_candidate() {
    local candidate
    candidate="$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')"
    [[ -n $candidate && $candidate != "(none)" ]]
}

apt_update_once() {
    if [[ $APT_UPDATED -eq 0 ]]; then
        log "apt-get update"
        apt-get update -qq
        APT_UPDATED=1
    fi
}

# Install the packages that are not installed yet. The package lists are refreshed only when
# apt does not know one of them (a fresh machine often ships without lists), or when the install
# fails, which is what stale lists (a 404 on a superseded .deb) look like.
install_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        is_installed "$pkg" || missing+=("$pkg")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "packages already installed: $*"
        return
    fi
    for pkg in "${missing[@]}"; do
        has_candidate "$pkg" || apt_update_once
    done
    log "apt-get install ${missing[*]}"
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
        [[ $APT_UPDATED -eq 0 ]] || die "could not install ${missing[*]}"
        apt_update_once
        apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}

# python3 -m venv needs ensurepip, which Debian splits into python3-venv. Another Python (pyenv,
# a distribution build) carries its own, and apt cannot help it anyway.
venv_package() {
    local python3
    python3="$(command -v python3 || true)"
    [[ -n $python3 ]] || die "python3 not found" "install Python 3.11 or newer"
    if ! "$python3" -c 'import ensurepip, venv' 2>/dev/null; then
        if [[ $(readlink -f "$python3") == /usr/bin/* ]]; then
            echo python3-venv
        else
            die "$python3 cannot create virtual environments (no ensurepip)" \
                "install the venv module of that Python"
        fi
    fi
}

# The URI of the Debian archive this machine already uses: the first source whose suite is the
# machine's own codename, in either sources format. Read from the machine's configuration so that
# mirrors, proxies and snapshots chosen by its administrator are respected.
debian_mirror() {
    local codename files=()
    codename="$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")"
    [[ -n $codename ]] || die "VERSION_CODENAME missing from /etc/os-release"
    shopt -s nullglob
    files=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list)
    {
        # one-line format: deb [options] uri suite components...
        for f in "${files[@]}"; do
            [[ -r $f ]] || continue
            awk -v c="$codename" '
                $1 == "deb" || $1 == "deb-src" {
                    i = 2
                    if ($2 ~ /^\[/) { while (i < NF && $i !~ /\]$/) i++; i++ }
                    if ($(i + 1) == c) print $i
                }' "$f"
        done
        # deb822 format: stanzas separated by blank lines
        for f in /etc/apt/sources.list.d/*.sources; do
            awk -v c="$codename" '
                BEGIN { RS = ""; FS = "\n" }
                {
                    uris = ""; suites = ""; enabled = 1
                    for (k = 1; k <= NF; k++) {
                        line = $k
                        if (line ~ /^#/) continue
                        if (line ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", line); uris = line }
                        else if (line ~ /^Suites:/) { sub(/^Suites:[ \t]*/, "", line); suites = line }
                        else if (tolower(line) ~ /^enabled:[ \t]*no/) enabled = 0
                    }
                    if (!enabled || uris == "") next
                    n = split(suites, s, /[ \t]+/)
                    for (j = 1; j <= n; j++) if (s[j] == c) { split(uris, u, /[ \t]+/); print u[1]; break }
                }' "$f"
        done
    } | head -n 1
}

# Build pgvector from Debian's trixie source package against PostgreSQL $1 (Debian 12).
#
# apt runs with a private sources list, lists and cache under .run/build/apt, so the machine's
# apt configuration and package lists are left exactly as they were. Proxy and other settings in
# /etc/apt/apt.conf.d still apply.
build_pgvector() {
    local major="$1" pg_config sharedir build_dir apt_dir mirror src_dir version
    pg_config="/usr/lib/postgresql/$major/bin/pg_config"
    sharedir="$("$pg_config" --sharedir)"
    if [[ -f $sharedir/extension/vector.control && -f $("$pg_config" --pkglibdir)/vector.so ]]; then
        log "pgvector already installed: $(awk -F"'" '/default_version/ {print $2}' \
            "$sharedir/extension/vector.control")"
        return
    fi
    build_dir="$RUN_DIR/build/pgvector"
    apt_dir="$RUN_DIR/build/apt"
    mirror="$(debian_mirror)"
    [[ -n $mirror ]] || die "could not find the Debian archive in this machine's apt sources" \
        "add a 'deb <mirror> $(. /etc/os-release && echo "$VERSION_CODENAME") main' source"
    log "building pgvector from the trixie source package ($mirror)"

    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$build_dir"
    printf 'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s trixie main\n' \
        "$mirror" >"$apt_dir/sources.list"
    local apt_private=(
        -o "Dir::Etc::SourceList=$apt_dir/sources.list"
        -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::State::Lists=$apt_dir/lists"
        -o "Dir::Cache=$apt_dir/cache"
        -o "APT::Get::List-Cleanup=false"
        # These folders are root's and may sit under root's 0700 home, where apt's _apt sandbox
        # user cannot write; apt would fall back to root with a warning, so say so up front.
        -o "APT::Sandbox::User=root"
    )
    if ! compgen -G "$apt_dir/lists/*_trixie_*Sources*" >/dev/null; then
        apt-get "${apt_private[@]}" update -qq
    fi

    rm -rf "${build_dir:?}"/*
    (cd "$build_dir" && apt-get "${apt_private[@]}" source -qq --only-source pgvector/trixie)
    src_dir="$(find "$build_dir" -mindepth 1 -maxdepth 1 -type d -name 'pgvector-*' | head -n 1)"
    [[ -n $src_dir ]] || die "apt-get source pgvector did not unpack a source tree in $build_dir"
    version="$(dpkg-parsechangelog -l "$src_dir/debian/changelog" -S Version)"
    log "pgvector source $version: make USE_PGXS=1 PG_CONFIG=$pg_config"
    make -s -C "$src_dir" -j "$(nproc)" USE_PGXS=1 PG_CONFIG="$pg_config" >/dev/null
    make -s -C "$src_dir" USE_PGXS=1 PG_CONFIG="$pg_config" install >/dev/null
    [[ -f $sharedir/extension/vector.control ]] || die "pgvector install left no vector.control"
    log "pgvector $version installed into PostgreSQL $major"
}

# pgvector for PostgreSQL $1: the distribution's (or PGDG's) package when apt has one, else
# built from Debian's trixie source package (Debian 12 does not package it).
install_pgvector() {
    local major="$1" pg_config
    pg_config="/usr/lib/postgresql/$major/bin/pg_config"
    if [[ -f $("$pg_config" --sharedir)/extension/vector.control &&
        -f $("$pg_config" --pkglibdir)/vector.so ]]; then
        log "pgvector already installed for PostgreSQL $major"
        return
    fi
    has_candidate "postgresql-$major-pgvector" || apt_update_once
    if has_candidate "postgresql-$major-pgvector"; then
        install_packages "postgresql-$major-pgvector"
    else
        install_packages dpkg-dev # unpacks the source package
        build_pgvector "$major"
    fi
}

main() {
    require_root
    local version major
    version="$(os_version_id)"
    case "$version" in
        12 | 13) ;;
        *)
            die "unsupported system: VERSION_ID=$version in /etc/os-release" \
                "pglocalai's set-up supports Debian 12 and 13"
            ;;
    esac
    # Debian's own server (15 on Debian 12, 17 on Debian 13), or PGLOCALAI_PG_MAJOR: the server
    # an existing installation runs (README "Install into an existing PostgreSQL").
    major="$(pg_major)"
    local packages=(postgresql-"$major" postgresql-plpython3-"$major" postgresql-server-dev-"$major")
    local venv_pkg
    venv_pkg="$(venv_package)"
    [[ -z $venv_pkg ]] || packages+=("$venv_pkg")
    # the runtime's environment is built with the system interpreter (scripts/cluster.sh)
    is_installed python3-venv || packages+=(python3-venv)

    log "Debian $version: PostgreSQL $major"
    install_packages "${packages[@]}"
    install_pgvector "$major"
}

main "$@"
