/* Satchel dashboard: the new-version form, progressively enhanced.
 *
 * Without this script the form posts the files as multipart/form-data and works as is.
 * With it:
 *  - when the server offers tus 1.0 at /api/v1/uploads (OPTIONS answers Tus-Version),
 *    each file is uploaded resumably: POST creates the upload (Upload-Length,
 *    Upload-Metadata), PATCH sends it in chunks (Upload-Offset), a dropped connection is
 *    resumed from the offset the server reports to HEAD, and the upload URL is kept in
 *    localStorage so even a reload continues where it stopped. Then the version is
 *    published with JSON {version, changelog, uploads} to /api/v1/products/{id}/versions
 *    (the session cookie authenticates; X-CSRF-Token carries the session's token);
 *  - otherwise the same multipart form is sent with XMLHttpRequest, for a progress bar.
 * Progress shows bytes and percent per file; the status line is a live region.
 */
(function () {
  'use strict';

  var CHUNK = 8 * 1024 * 1024;
  var TUS = '1.0.0';
  var MAX_RETRIES = 30;

  function human(n) {
    var units = ['bytes', 'KB', 'MB', 'GB', 'TB'];
    var i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n : n.toFixed(n >= 100 ? 0 : 1)) + ' ' + units[i];
  }

  function b64(s) {
    var bytes = new TextEncoder().encode(s);
    var bin = '';
    for (var i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i]);
    return btoa(bin);
  }

  function sleep(ms) { return new Promise(function (r) { setTimeout(r, ms); }); }

  function init() {
    var form = document.getElementById('version-form');
    if (!form || form.dataset.enhanced === '1' || !window.fetch || !window.XMLHttpRequest) return;
    form.dataset.enhanced = '1';
    var input = form.querySelector('input[type=file]');
    var box = document.getElementById('upload-progress');
    var list = document.getElementById('upload-list');
    var status = document.getElementById('upload-status');
    var submit = document.getElementById('publish-version');
    var csrf = form.dataset.csrf || '';
    var busy = false;

    function say(text, isError) {
      status.textContent = text;
      status.className = 'upload-status' + (isError ? ' error' : '');
    }

    function rows(files) {
      list.textContent = '';
      return files.map(function (f) {
        var li = document.createElement('li');
        var name = document.createElement('span');
        name.className = 'upload-name';
        name.textContent = f.name;
        var bytes = document.createElement('span');
        bytes.className = 'upload-bytes';
        var bar = document.createElement('progress');
        bar.max = Math.max(f.size, 1);
        bar.value = 0;
        bar.setAttribute('aria-label', 'Upload progress of ' + f.name);
        li.appendChild(name);
        li.appendChild(bytes);
        li.appendChild(bar);
        list.appendChild(li);
        var row = {
          set: function (done) {
            bar.value = Math.min(done, f.size);
            var pct = f.size ? Math.floor(done * 100 / f.size) : 100;
            bytes.textContent = human(done) + ' of ' + human(f.size) + ' · ' + pct + '%';
            li.dataset.percent = String(pct);
          }
        };
        row.set(0);
        return row;
      });
    }

    function start() {
      busy = true;
      submit.disabled = true;
      form.setAttribute('aria-busy', 'true');
      box.hidden = false;
    }

    function stop() {
      busy = false;
      submit.disabled = false;
      form.removeAttribute('aria-busy');
    }

    window.addEventListener('beforeunload', function (e) {
      if (busy) { e.preventDefault(); e.returnValue = ''; }
    });

    function tusAvailable() {
      return fetch('/api/v1/uploads', { method: 'OPTIONS', credentials: 'same-origin' })
        .then(function (r) { return r.ok && !!(r.headers.get('Tus-Version') || r.headers.get('Tus-Resumable')); })
        .catch(function () { return false; });
    }

    function tusHeaders(extra) {
      var h = { 'Tus-Resumable': TUS, 'X-CSRF-Token': csrf };
      for (var k in extra) h[k] = extra[k];
      return h;
    }

    function storageKey(f) {
      return 'satchel-tus:' + form.dataset.productId + ':' + f.name + ':' + f.size + ':' + f.lastModified;
    }

    /* The server's offset for an upload URL, or null when it no longer knows it. */
    function head(url) {
      return fetch(url, { method: 'HEAD', headers: tusHeaders({}), credentials: 'same-origin', cache: 'no-store' })
        .then(function (r) {
          if (!r.ok) return null;
          var off = parseInt(r.headers.get('Upload-Offset'), 10);
          return isNaN(off) ? null : off;
        });
    }

    function create(f) {
      var meta = 'filename ' + b64(f.name) + ',filetype ' + b64(f.type || 'application/octet-stream');
      return fetch('/api/v1/uploads', {
        method: 'POST',
        credentials: 'same-origin',
        headers: tusHeaders({ 'Upload-Length': String(f.size), 'Upload-Metadata': meta })
      }).then(function (r) {
        if (r.status !== 201 || !r.headers.get('Location')) {
          return r.text().then(function (t) {
            var msg = 'The server refused the upload (' + r.status + ').';
            try { msg = JSON.parse(t).error.message || msg; } catch (e) { /* not JSON */ }
            throw new Error(msg);
          });
        }
        return new URL(r.headers.get('Location'), location.href).href;
      });
    }

    /* One PATCH with upload progress (fetch has none); resolves with the new offset. */
    function patch(url, f, offset, row) {
      return new Promise(function (resolve, reject) {
        var end = Math.min(offset + CHUNK, f.size);
        var xhr = new XMLHttpRequest();
        xhr.open('PATCH', url);
        xhr.setRequestHeader('Tus-Resumable', TUS);
        xhr.setRequestHeader('X-CSRF-Token', csrf);
        xhr.setRequestHeader('Upload-Offset', String(offset));
        xhr.setRequestHeader('Content-Type', 'application/offset+octet-stream');
        xhr.upload.onprogress = function (e) { row.set(offset + e.loaded); };
        xhr.onload = function () {
          if (xhr.status === 204 || xhr.status === 200) {
            var off = parseInt(xhr.getResponseHeader('Upload-Offset'), 10);
            resolve(isNaN(off) ? end : off);
          } else {
            var err = new Error('upload chunk refused (' + xhr.status + ')');
            err.status = xhr.status;
            reject(err);
          }
        };
        xhr.onerror = function () { reject(new Error('connection lost')); };
        xhr.ontimeout = xhr.onerror;
        xhr.send(f.slice(offset, end));
      });
    }

    function uploadOne(f, row) {
      var key = storageKey(f);
      var saved = null;
      try { saved = localStorage.getItem(key); } catch (e) { /* private mode */ }
      var ready = saved
        ? head(saved).then(function (off) {
            if (off === null) return create(f).then(function (u) { return [u, 0]; });
            if (off > 0) say('Resuming ' + f.name + ' from ' + human(off) + '…');
            return [saved, off];
          }).catch(function () { return create(f).then(function (u) { return [u, 0]; }); })
        : create(f).then(function (u) { return [u, 0]; });
      return ready.then(function (pair) {
        var url = pair[0];
        var offset = pair[1];
        try { localStorage.setItem(key, url); } catch (e) { /* private mode */ }
        row.set(offset);
        var retries = 0;
        function step() {
          if (offset >= f.size) { row.set(f.size); return Promise.resolve(url); }
          return patch(url, f, offset, row).then(function (off) {
            offset = off;
            retries = 0;
            return step();
          }, function (err) {
            if (err.status && err.status >= 400 && err.status < 500 && err.status !== 409 && err.status !== 423) throw err;
            if (++retries > MAX_RETRIES) throw new Error('The connection keeps dropping. Your upload is saved: try again later and it resumes.');
            var wait = Math.min(1000 * Math.pow(2, retries - 1), 20000);
            say('Connection lost. Resuming ' + f.name + ' in ' + Math.round(wait / 1000) + ' s…');
            return sleep(wait).then(function () { return head(url); }).then(function (off) {
              if (off === null) throw new Error('The server forgot this upload; start again.');
              offset = off;
              say('Resuming ' + f.name + ' from ' + human(off) + '…');
              return step();
            }, function () { return step(); });
          });
        }
        return step();
      });
    }

    function publish(urls) {
      say('Publishing the version…');
      return fetch('/api/v1/products/' + encodeURIComponent(form.dataset.productId) + '/versions', {
        method: 'POST',
        credentials: 'same-origin',
        headers: { 'Content-Type': 'application/json', 'Accept': 'application/json', 'X-CSRF-Token': csrf },
        body: JSON.stringify({
          version: form.elements.version.value,
          changelog: form.elements.changelog.value,
          uploads: urls
        })
      }).then(function (r) {
        if (r.status === 201) return;
        return r.json().catch(function () { return {}; }).then(function (body) {
          var e = (body && body.error) || {};
          var err = new Error(e.message || ('Publishing failed (' + r.status + ').'));
          err.field = e.field;
          throw err;
        });
      });
    }

    function viaTus(files, bars) {
      var urls = [];
      var chain = Promise.resolve();
      files.forEach(function (f, i) {
        chain = chain.then(function () {
          say('Uploading ' + f.name + ' (' + (i + 1) + ' of ' + files.length + ')…');
          return uploadOne(f, bars[i]).then(function (u) { urls.push(u); });
        });
      });
      return chain.then(function () { return publish(urls); }).then(function () {
        files.forEach(function (f) { try { localStorage.removeItem(storageKey(f)); } catch (e) { /* ignore */ } });
        say('Published. Taking you back to the product…');
        busy = false;
        location.assign(form.dataset.done);
      });
    }

    /* No tus server: the plain multipart form, sent with XHR for its progress events. */
    function viaMultipart(files, bars) {
      var total = files.reduce(function (s, f) { return s + f.size; }, 0);
      say('Uploading ' + files.length + (files.length === 1 ? ' file' : ' files') + '…');
      return new Promise(function (resolve, reject) {
        var xhr = new XMLHttpRequest();
        xhr.open('POST', form.action);
        xhr.upload.onprogress = function (e) {
          var sent = total ? e.loaded * total / Math.max(e.total, 1) : 0;
          var acc = 0;
          files.forEach(function (f, i) {
            bars[i].set(Math.max(0, Math.min(f.size, sent - acc)));
            acc += f.size;
          });
        };
        xhr.onload = function () {
          if (xhr.status >= 200 && xhr.status < 300 && xhr.responseURL.indexOf('/versions') === -1) {
            busy = false;
            say('Published. Taking you back to the product…');
            location.assign(xhr.responseURL);
            resolve();
            return;
          }
          // The server re-rendered the form with its messages: show that page's main.
          var doc = new DOMParser().parseFromString(xhr.responseText, 'text/html');
          var main = doc.querySelector('main');
          if (main) {
            document.querySelector('main').replaceWith(document.importNode(main, true));
            busy = false;
            init();
            var first = document.querySelector('.alert a, [aria-invalid=true]');
            if (first) first.focus();
            resolve();
          } else {
            reject(new Error('The upload failed (' + xhr.status + '). Try again.'));
          }
        };
        xhr.onerror = function () { reject(new Error('The connection was lost. Try again.')); };
        xhr.send(new FormData(form));
      });
    }

    form.addEventListener('submit', function (ev) {
      var files = Array.prototype.slice.call(input.files || []);
      if (!files.length || busy) return; // the browser or the server explains what is missing
      ev.preventDefault();
      start();
      var bars = rows(files);
      tusAvailable().then(function (tus) {
        form.dataset.transport = tus ? 'tus' : 'multipart';
        return tus ? viaTus(files, bars) : viaMultipart(files, bars);
      }).catch(function (err) {
        stop();
        say(err.message || String(err), true);
        if (err.field === 'version') form.elements.version.focus();
      });
    });
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
