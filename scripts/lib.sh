# Sourced by the other scripts: the few steps several of them take.

# Runs a command as root (directly, or through sudo).
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# apt_install PACKAGE...: installs Debian packages, quietly; one `apt-get
# update` per script run.
apt_install() {
  echo "==> installing $* (apt)"
  if [ -z "${_APT_UPDATED:-}" ]; then
    as_root apt-get update -qq
    _APT_UPDATED=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# pip_install SPEC...: installs Python packages for the user running make.
pip_install() {
  echo "==> installing $* (pip)"
  python3 -m pip install --quiet --disable-pip-version-check "$@"
}

# port_open HOST PORT: whether something accepts connections on HOST:PORT.
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# wait_port HOST PORT SECONDS: waits until something accepts connections on
# HOST:PORT; returns 1 when SECONDS pass first.
wait_port() {
  local host=$1 port=$2 seconds=$3 _
  for _ in $(seq 1 $((seconds * 5))); do
    port_open "$host" "$port" && return 0
    sleep 0.2
  done
  return 1
}
