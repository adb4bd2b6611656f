# make deb   -> dist/j1msky_<version>_all.deb (dpkg-buildpackage -b -us -uc on a copy of
#               the tree in build/deb, with a clean PATH: Debian's /usr/bin/python3 only)
# make lintian, make pyz (-> ./j1mskyd.pyz), make clean.  See docs/packaging.md.
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' j1mskyd/__init__.py)
SRC := build/deb/j1msky-$(VERSION)
DEB := dist/j1msky_$(VERSION)_all.deb
# pyenv/venv pythons on PATH must not leak into the build (pybuild would use them).
CLEAN_ENV := env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=$(CURDIR)/build/home LANG=C.UTF-8 \
	DEB_BUILD_OPTIONS="$(DEB_BUILD_OPTIONS)" DEB_BUILD_PROFILES="$(DEB_BUILD_PROFILES)"

.PHONY: deb lintian pyz clean
deb:
	rm -rf build/deb && mkdir -p $(SRC) build/home dist
	tar -c --exclude='./.*' --exclude=./build --exclude=./dist \
	  --exclude=./debian --exclude='*.egg-info' --exclude=__pycache__ \
	  --exclude=./j1mskyd.pyz . | tar -x -C $(SRC)
	cp -a packaging/debian $(SRC)/debian
	cd $(SRC) && $(CLEAN_ENV) dpkg-buildpackage -b -us -uc
	mv build/deb/j1msky_$(VERSION)_all.deb $(DEB)
	@echo "built $(DEB)"

lintian: $(DEB)
	$(CLEAN_ENV) lintian --info --display-info --fail-on error $(DEB)

$(DEB):
	$(MAKE) deb

pyz:
	/usr/bin/python3 scripts/build-pyz -o j1mskyd.pyz

clean:
	rm -rf build/deb build/home dist j1mskyd.pyz
