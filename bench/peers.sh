# The C peers' nginx configurations, shared by the scripts that run them (sourced, not run).
# Each function writes DIR/nginx.conf; start it with
#   nginx -p DIR -c DIR/nginx.conf -g 'daemon off;'

# `nchan_conf DIR`: nginx + nchan (Debian's libnginx-mod-nchan), one worker, on 127.0.0.1:13110:
# publishes by POST to /pub/<topic>, EventSource subscribers at /sub/<topic>.
nchan_conf() {
  mkdir -p "$1"
  cat > "$1/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
worker_processes 1;
worker_rlimit_nofile 30000;
error_log $1/error.log;
pid $1/nginx.pid;
events { worker_connections 30000; }
http {
  access_log off;
  client_body_temp_path $1/body;
  server {
    listen 127.0.0.1:13110;
    location ~ ^/pub/(.+)\$ { nchan_publisher; nchan_channel_id \$1; }
    location ~ ^/sub/(.+)\$ { nchan_subscriber eventsource; nchan_channel_id \$1; }
  }
}
CONF
}

# `upstreams_conf DIR`: three trivial upstreams (one worker, ports 13101-13103) that answer one
# event's JSON, no access log (like the gateway by default).
upstreams_conf() {
  local body='{"id":"0f8b5c1e-1d2a-4c3b-9e4f-5a6b7c8d9e0f","userId":"wrk","title":"wrk","description":"one event read by wrk","completed":false,"createdAt":"2026-11-27T12:00:00Z","topic":"","seq":0}'
  mkdir -p "$1"
  cat > "$1/nginx.conf" <<CONF
worker_processes 1; pid $1/pid; error_log $1/error.log;
events { worker_connections 4096; }
http { access_log off; default_type application/json;
  server { listen 127.0.0.1:13101; listen 127.0.0.1:13102; listen 127.0.0.1:13103; keepalive_requests 1000000;
    location / { return 200 '$body'; } } }
CONF
}

# `front_conf DIR WORKERS`: nginx `least_conn` on 127.0.0.1:13100 over those upstreams, keepalive
# connections to them, WORKERS worker processes (`auto` or a number).
front_conf() {
  mkdir -p "$1"
  cat > "$1/nginx.conf" <<CONF
worker_processes $2; pid $1/pid; error_log $1/error.log;
events { worker_connections 4096; }
http { access_log off;
  upstream events { least_conn; server 127.0.0.1:13101; server 127.0.0.1:13102; server 127.0.0.1:13103; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:13100; keepalive_requests 1000000;
    location / { proxy_pass http://events; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
}
