"""`meson install` into a DESTDIR: the binary runs, and the man page, the slot
setup script, the sample configuration and the systemd unit are in place."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO

BUILD = Path(os.environ.get("PGOUTBOX_INSTALL_BUILD") or REPO / "build")


def meson_version():
    return re.search(r"version\s*:\s*'([^']+)'", (REPO / "meson.build").read_text()).group(1)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    if not (BUILD / "meson-private" / "coredata.dat").exists():
        pytest.fail("no configured build directory at %s (meson setup build)" % BUILD)
    dest = tmp_path_factory.mktemp("destdir")
    r = subprocess.run(["meson", "install", "-C", str(BUILD), "--destdir", str(dest),
                        "--no-rebuild", "--quiet"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    intro = subprocess.run(["meson", "introspect", "--buildoptions", str(BUILD)],
                           capture_output=True, text=True, check=True).stdout
    prefix = re.search(r'"name": "prefix", "value": "([^"]+)"', intro).group(1)
    return dest / prefix.lstrip("/"), prefix


def test_installed_binary_runs(installed):
    root, _ = installed
    binary = root / "bin" / "pgoutbox"
    r = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "pgoutbox %s" % meson_version()


def test_installed_setup_script(installed):
    root, _ = installed
    script = root / "bin" / "pgoutbox-setup-slot"
    assert os.access(script, os.X_OK)
    r = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0 and "--create-table" in r.stdout + r.stderr


def test_installed_man_page(installed):
    root, _ = installed
    page = root / "share" / "man" / "man1" / "pgoutbox.1"
    text = page.read_text()
    assert '"pgoutbox %s"' % meson_version() in text, "man page version differs from meson.build"
    if shutil.which("man"):
        r = subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True,
                           text=True, timeout=30, env=dict(os.environ, MANWIDTH="80",
                                                           LC_ALL="C.UTF-8", MANPAGER="cat"))
        assert r.returncode == 0 and not r.stderr.strip(), r.stderr
        rendered = r.stdout
    else:
        rendered = text
    # Every setting of the table is documented in the man page too.
    settings = subprocess.run([str(root / "bin" / "pgoutbox"), "--list-settings"],
                              capture_output=True, text=True, check=True).stdout
    for line in settings.splitlines():
        name = line.split("\t")[0]
        assert "[%s]" % name in rendered.replace("\u2010", "-"), "man page lacks [%s]" % name
    assert "--check" in rendered.replace("\u2010", "-")


def test_installed_sample_config_and_unit(installed):
    root, prefix = installed
    sample = root / "share" / "doc" / "pgoutbox" / "pgoutbox.conf.sample"
    assert sample.read_text() == (REPO / "scripts" / "pgoutbox.conf.sample").read_text()
    unit = (root / "lib" / "systemd" / "system" / "pgoutbox.service").read_text()
    assert re.search(r"^ExecStart=%s/bin/pgoutbox -c " % re.escape(prefix), unit, re.M), unit
    assert "Type=notify" in unit
