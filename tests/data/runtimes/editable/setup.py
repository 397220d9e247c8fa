from setuptools import setup

setup(name="site", py_modules=["site_app"], install_requires=["flask"])
