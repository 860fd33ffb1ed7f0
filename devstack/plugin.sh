# hvgate devstack plugin: installs the apt pins an hvgate run wrote for this node's distro,
# release and pocket before devstack installs libvirt and QEMU (stack pre-install), and fails
# the stack when what apt installed is off them (stack install, right after devstack installed
# them). Sourced by devstack as `plugin.sh MODE [PHASE]`; its variables are in settings.

HVGATE_PREFERENCES_DIR=${HVGATE_PREFERENCES_DIR:-/etc/apt/preferences.d}
HVGATE_SOURCES_DIR=${HVGATE_SOURCES_DIR:-/etc/apt/sources.list.d}

# The pins' name: DISTRO-RELEASE[-POCKET], as `hvgate matrix.pin` names its files.
function hvgate_pins_name {
    local distro release codename pocket
    distro=$(. /etc/os-release && echo "${ID:-}")
    release=$(. /etc/os-release && echo "${VERSION_ID:-}")
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    if [[ $distro == debian && -z $release ]]; then
        release=unstable
    fi
    pocket=$HVGATE_PINS_POCKET
    if [[ $pocket == auto ]]; then
        if [[ $codename == bookworm ]]; then
            pocket=backports
        elif [[ $distro == ubuntu ]]; then
            pocket=updates
        elif [[ $release == unstable ]]; then
            pocket=unstable
        else
            pocket=release
        fi
    fi
    local name="$distro-$release"
    if [[ $pocket != "$release" ]]; then
        name="$name-$pocket"
    fi
    if [[ ! $name =~ ^[a-z0-9][a-z0-9.-]*$ ]]; then
        die $LINENO "hvgate: HVGATE_PINS_POCKET='$HVGATE_PINS_POCKET' on $distro $release makes no pins name ('$name')"
    fi
    if [[ $codename == bookworm && $pocket != backports && $HVGATE_PINS_OVER_DEVSTACK_BACKPORTS != True ]]; then
        die $LINENO "hvgate: devstack installs QEMU and libvirt from bookworm-backports (its 990 pin) on Debian 12; the $name pins would hold them at other versions: use HVGATE_PINS_POCKET=backports, or set HVGATE_PINS_OVER_DEVSTACK_BACKPORTS=True to let them"
    fi
    echo "$name"
}

# hvgate_fetch FILE DEST: one file of the published pins.
function hvgate_fetch {
    case $HVGATE_PINS in
        http://* | https://*)
            curl --fail --silent --show-error --location --retry 3 -o "$2" "${HVGATE_PINS%/}/$1"
            ;;
        *)
            cp "${HVGATE_PINS%/}/$1" "$2"
            ;;
    esac
}

function hvgate_install_pins {
    if [[ -z $HVGATE_PINS ]]; then
        die $LINENO "hvgate: set HVGATE_PINS to the URL or directory of the published pins"
    fi
    local name
    name=$(hvgate_pins_name) || die $LINENO "hvgate: no pins name for this node"
    local work
    work=$(mktemp -d)
    if ! hvgate_fetch "$name.pref" "$work/$name.pref" || ! hvgate_fetch "$name.check" "$work/$name.check"; then
        rm -rf "$work"
        die $LINENO "hvgate: no pins $name at $HVGATE_PINS (does the run have a safe $name cell?)"
    fi
    # Only what `hvgate matrix.pin` writes: one-line comments and exact-version stanzas at 1001
    # (hold) or -1 (block); never a priority for a whole suite.
    local bad
    bad=$(grep -nvE '^(#.*|Explanation: .*|Package: (src:)?[a-z0-9][a-z0-9+.-]+|Pin: version [^ ]+|Pin-Priority: (1001|-1)|)$' "$work/$name.pref" | head -n1)
    if [[ -n $bad ]]; then
        rm -rf "$work"
        die $LINENO "hvgate: $name.pref has a line these pins never have: $bad"
    fi
    sudo mkdir -p "$HVGATE_PINS_STATE"
    sudo install -m 0644 "$work/$name.pref" "$HVGATE_PREFERENCES_DIR/00-hvgate-$name.pref"
    sudo install -m 0755 "$work/$name.check" "$HVGATE_PINS_STATE/$name.check"
    echo "$name" | sudo tee "$HVGATE_PINS_STATE/pins-name" >/dev/null
    if [[ $HVGATE_PINS_SNAPSHOT == True ]]; then
        if ! hvgate_fetch "$name.snapshot.list" "$work/$name.snapshot.list"; then
            rm -rf "$work"
            die $LINENO "hvgate: HVGATE_PINS_SNAPSHOT=True, but the $name pins name no snapshot archive (hvgate matrix.pin --snapshot URL)"
        fi
        sudo install -m 0644 "$work/$name.snapshot.list" "$HVGATE_SOURCES_DIR/hvgate-snapshot.list"
        sudo apt-get update
    fi
    rm -rf "$work"
    echo "hvgate: installed the $name pins in $HVGATE_PREFERENCES_DIR/00-hvgate-$name.pref"
}

function hvgate_check_pins {
    local name
    name=$(cat "$HVGATE_PINS_STATE/pins-name" 2>/dev/null) ||
        die $LINENO "hvgate: no pins were installed (stack pre-install did not run?)"
    if ! sh "$HVGATE_PINS_STATE/$name.check"; then
        die $LINENO "hvgate: the installed packages are not the ones the $name pins name (above)"
    fi
}

function hvgate_remove_pins {
    local name
    name=$(cat "$HVGATE_PINS_STATE/pins-name" 2>/dev/null) || return 0
    sudo rm -f "$HVGATE_PREFERENCES_DIR/00-hvgate-$name.pref" "$HVGATE_PINS_STATE/$name.check" \
        "$HVGATE_PINS_STATE/pins-name" "$HVGATE_SOURCES_DIR/hvgate-snapshot.list"
}

if [[ $1 == stack && $2 == pre-install ]]; then
    hvgate_install_pins
elif [[ $1 == stack && $2 == install ]]; then
    # devstack installed libvirt and QEMU (install_libvirt) just before this phase.
    hvgate_check_pins
elif [[ $1 == clean ]]; then
    hvgate_remove_pins
fi
