"""JupyterHub config for gpuhub: wiring only.

The operator edits the site config (GPUHUB_SITE_CONFIG, default examples/site.yaml);
each part of the hub is set by one small function in gpuhub/hub/hubconfig.py.
"""

from gpuhub.hub import hubconfig

c = get_config()  # noqa: F821 (provided by JupyterHub when it loads this file)

site, facts = hubconfig.prepare()
hubconfig.apply_hub(c, site, facts)
hubconfig.apply_auth(c, site, facts)
hubconfig.apply_spawner(c, site, facts)
hubconfig.apply_services(c, site, facts)
hubconfig.apply_courses(c, site, facts)
