"""JupyterHub config for gpuhub: wiring only.

The operator edits the site config (GPUHUB_SITE_CONFIG, default examples/site.yaml);
each part of the hub is set by one small function in gpuhub/hub/hubconfig.py.
"""

from gpuhub.hub import hubconfig
from gpuhub.hub.idle_config import apply_idle

c = get_config()  # noqa: F821 (provided by JupyterHub when it loads this file)

site, facts = hubconfig.prepare()
hubconfig.apply_hub(c, site, facts)
hubconfig.apply_auth(c, site, facts)
hubconfig.apply_spawner(c, site, facts)
hubconfig.apply_services(c, site, facts)
apply_idle(c, site, facts)  # after apply_services and apply_hub: it extends their services and template_vars
hubconfig.apply_courses(c, site, facts)
