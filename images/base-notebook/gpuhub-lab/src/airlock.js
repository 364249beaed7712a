// gpuhub-lab: "Request export…" in the file browser's context menu of a project server (issue 14 item 1).
//
// The entry asks for the reason in a dialog and POSTs {path, why} to this server's
// `{base_url}gpuhub/airlock/exports` (gpuhub_lab/airlock_handlers.py), which forwards it to the hub's
// gpuhub-airlock service with the server's own hub token (the page holds none) and the project of this server.
// The answer (request id and state, or the refusal's rule id and message) is shown as a notification.
// The entry exists only where `GET gpuhub/airlock` says this is a project server with the airlock configured.
// Plain JavaScript, no imports: the default file browser is found among the left panel's widgets (id
// `filebrowser`), the dialog uses JupyterLab's own dialog classes, notifications its apputils:notify command.

export const COMMAND = 'gpuhub-lab:request-export';
const FILE_ITEM = '.jp-DirListing-item[data-isdir="false"]';

function xsrfToken() {
  const m = document.cookie.match(/(?:^|;\s*)_xsrf=([^;]*)/);
  return m ? decodeURIComponent(m[1]) : '';
}

// The reason, from a modal dialog in JupyterLab's own look; null when cancelled.
function askWhy(path) {
  return new Promise(resolve => {
    const host = document.createElement('div');
    host.className = 'jp-Dialog jp-ThemedContainer gpuhub-airlock-dialog';
    // on top of the shell whatever the theme's dialog rules are (JupyterLab attaches its own dialogs the same way)
    host.style.cssText =
      'position:fixed;inset:0;z-index:10000;display:flex;align-items:center;justify-content:center;' +
      'background:rgba(0,0,0,0.25)';
    host.innerHTML = `
      <div class="jp-Dialog-content" role="dialog" aria-modal="true" aria-label="Request export"
           style="max-width:560px">
        <div class="jp-Dialog-header">Request export</div>
        <div class="jp-Dialog-body">
          <p>Ask your project's stewards to let <b class="gpuhub-airlock-path"></b> out of the project.
          The airlock copies the file as it is now, checks it and shows it to them.</p>
          <label>Why should it leave the project? (the stewards read this)
            <textarea class="jp-mod-styled gpuhub-airlock-why" rows="3"
              style="width:100%;box-sizing:border-box;resize:vertical;margin-top:4px"></textarea>
          </label>
        </div>
        <div class="jp-Dialog-footer">
          <div class="jp-Dialog-spacer"></div>
          <div class="jp-Dialog-footerButtons">
            <button class="jp-Dialog-button jp-mod-reject jp-mod-styled gpuhub-airlock-cancel">Cancel</button>
            <button class="jp-Dialog-button jp-mod-accept jp-mod-styled gpuhub-airlock-submit">Request export</button>
          </div>
        </div>
      </div>`;
    host.querySelector('.gpuhub-airlock-path').textContent = path;
    const why = host.querySelector('.gpuhub-airlock-why');
    const submit = host.querySelector('.gpuhub-airlock-submit');
    const close = value => {
      host.remove();
      resolve(value);
    };
    const update = () => {
      submit.disabled = !why.value.trim();
    };
    why.addEventListener('input', update);
    submit.addEventListener('click', () => close(why.value.trim()));
    host.querySelector('.gpuhub-airlock-cancel').addEventListener('click', () => close(null));
    host.addEventListener('keydown', e => {
      if (e.key === 'Escape') {
        close(null);
      }
    });
    update();
    document.body.appendChild(host);
    why.focus();
  });
}

function resultText(path, resp, body) {
  if (resp.ok) {
    const flagged = (body.checks || []).filter(c => !c.passed).map(c => c.rule);
    const checks = flagged.length
      ? ` The checks flagged: ${[...new Set(flagged)].join(', ')}; the stewards see it and decide.`
      : '';
    return `Export request ${body.id} for ${path}: ${body.state}.${checks}`;
  }
  return `Export of ${path} refused (${body.rule || resp.status}): ${body.message || resp.statusText}`;
}

const plugin = {
  id: 'gpuhub-lab:airlock',
  description: 'Request export… in the file browser of a project server: asks the airlock to let a file out.',
  autoStart: true,
  activate: app => {
    const settings = app.serverSettings || app.serviceManager.serverSettings;
    const base = `${settings.baseUrl.replace(/\/?$/, '/')}gpuhub/airlock`;
    const headers = settings.token ? { Authorization: `token ${settings.token}` } : {};
    const fileBrowser = () => {
      for (const w of app.shell.widgets('left')) {
        if (w.id === 'filebrowser') {
          return w;
        }
      }
      return null;
    };
    const selectedFile = () => {
      const fb = fileBrowser();
      if (!fb) {
        return null;
      }
      for (const item of fb.selectedItems()) {
        if (item.type !== 'directory') {
          return item.path;
        }
      }
      return null;
    };
    const request = async path => {
      const why = await askWhy(path);
      if (why === null) {
        return null;
      }
      const resp = await fetch(`${base}/exports`, {
        method: 'POST',
        credentials: 'same-origin',
        headers: { ...headers, 'Content-Type': 'application/json', 'X-XSRFToken': xsrfToken() },
        body: JSON.stringify({ path, why })
      });
      let body = {};
      try {
        body = await resp.json();
      } catch (err) {
        console.debug('gpuhub-lab: airlock answer unreadable', err);
      }
      await app.commands.execute('apputils:notify', {
        message: resultText(path, resp, body),
        type: resp.ok ? 'success' : 'error',
        options: { autoClose: false }
      });
      return body;
    };
    void fetch(base, { headers, credentials: 'same-origin', cache: 'no-store' })
      .then(resp => (resp.ok ? resp.json() : {}))
      .then(info => {
        if (!info.project || !info.configured) {
          return;
        }
        app.commands.addCommand(COMMAND, {
          label: 'Request export…',
          caption: `Ask the stewards of project ${info.project} to let this file out through the airlock`,
          isEnabled: () => selectedFile() !== null,
          execute: args => {
            const path = (args && args.path) || selectedFile();
            return path ? request(path) : null;
          }
        });
        app.contextMenu.addItem({ command: COMMAND, selector: FILE_ITEM, rank: 11 });
      })
      .catch(err => console.debug('gpuhub-lab: airlock unavailable', err));
  }
};

export default plugin;
