################################################################################
#
# torpor
#
################################################################################

# Built from the repository this external tree lives in: the Cargo
# workspace root (Cargo.toml and the committed Cargo.lock) is the parent of
# buildroot/. A local site makes Buildroot rsync it into the build
# directory (whose version is then "custom").
TORPOR_VERSION = 0.1.0
TORPOR_SITE = $(BR2_EXTERNAL_TORPOR_PATH)/..
TORPOR_SITE_METHOD = local
TORPOR_LICENSE = MIT or Apache-2.0
# No .hash file: a local site has nothing to download, hence nothing to
# check; the crates are pinned by the checksums in Cargo.lock (--locked).

# Build products of the checkout itself stay out of the copy: target/
# holds host builds (gigabytes), build/ the bench caches and possibly this
# very Buildroot output directory, which rsync would otherwise copy into
# itself.
TORPOR_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = \
	--exclude /target --exclude /build --exclude /fuzz/target

# The workspace root is a virtual manifest, which "cargo install --path ./"
# refuses; the agent crate owns the torpor binary and still resolves its
# dependencies through the workspace's Cargo.lock.
TORPOR_SUBDIR = agent
TORPOR_CARGO_BUILD_OPTS = --bin torpor

# Buildroot vendors a cargo package's crates while post-processing its
# download; a local site skips the download step, so fetch them into
# Buildroot's cargo home (in DL_DIR) before the --offline --locked build.
# This is the only step that needs the network, and only the first time.
define TORPOR_CARGO_FETCH
	cd $(TORPOR_SRCDIR) && \
	$(TARGET_MAKE_ENV) $(PKG_CARGO_ENV) \
		cargo fetch --locked --manifest-path Cargo.toml
endef
TORPOR_PRE_BUILD_HOOKS += TORPOR_CARGO_FETCH

# The init hook, the unit and the default configuration describe the
# board the image is for; they come from the same checkout as the binary.
TORPOR_BOARD_DIR = $(@D)/board/raspberrypi0

# Group whose members may connect to /run/torpor.sock (see torpor.toml).
define TORPOR_USERS
	- - torpor -1 * - - - torpor socket access
endef

define TORPOR_INSTALL_CONFIG
	$(INSTALL) -D -m 0644 $(TORPOR_BOARD_DIR)/torpor.toml \
		$(TARGET_DIR)/etc/torpor.toml
endef
TORPOR_POST_INSTALL_TARGET_HOOKS += TORPOR_INSTALL_CONFIG

define TORPOR_INSTALL_INIT_SYSV
	$(INSTALL) -D -m 0755 $(TORPOR_BOARD_DIR)/S01torpor \
		$(TARGET_DIR)/etc/init.d/S01torpor
endef

# Enabled through a preset (what "systemctl preset-all" applies) and the
# matching wants link, so the unit starts whether or not presets run.
define TORPOR_INSTALL_INIT_SYSTEMD
	$(INSTALL) -D -m 0644 $(TORPOR_BOARD_DIR)/torpor.service \
		$(TARGET_DIR)/usr/lib/systemd/system/torpor.service
	mkdir -p $(TARGET_DIR)/usr/lib/systemd/system-preset
	echo "enable torpor.service" \
		> $(TARGET_DIR)/usr/lib/systemd/system-preset/80-torpor.preset
	mkdir -p $(TARGET_DIR)/etc/systemd/system/sysinit.target.wants
	ln -sf /usr/lib/systemd/system/torpor.service \
		$(TARGET_DIR)/etc/systemd/system/sysinit.target.wants/torpor.service
endef

$(eval $(cargo-package))
