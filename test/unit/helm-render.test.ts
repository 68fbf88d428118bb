/**
 * The chart renderer of test/lib/helm-render.ts (no helm binary can be installed here). The
 * expected outputs are what Helm 3/4 prints for the same templates (Go text/template + Sprig
 * semantics): trimming, truthiness, define/include with a changed dot, with/else, maps that
 * toYaml writes in block style, printf/trunc/trimSuffix chains.
 */
import t from 'tap';
import { type HelmContext, renderChart, renderTemplate } from '../lib/helm-render.js';

const ctx: HelmContext = {
  Values: { a: { b: 'x', n: 3, m: {}, l: [1, 2], map: { k: 'v', z: { y: 1 } } }, on: true, off: false, empty: '' },
  Release: { Name: 'rel', Namespace: 'ns', Service: 'Helm' },
  Chart: { Name: 'mychart', Version: '1.2.3+build.4', AppVersion: '9.0' },
};

const HELPERS = `{{/* labels */}}
{{- define "c.labels" -}}
app: {{ .Chart.Name }}
release: {{ .Release.Name }}
chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "c.name" -}}{{ .name | default "unnamed" }}{{- end }}
{{- define "c.block" -}}
{{- if .Values.on }}
on: yes
{{- else }}
on: no
{{- end }}
{{- end }}`;

t.test('values, quoting and defaults', async (t) => {
  t.equal(renderTemplate('v: {{ .Values.a.b }} {{ .Release.Namespace }}', ctx), 'v: x ns');
  t.equal(renderTemplate('v: {{ .Values.a.n | quote }}', ctx), 'v: "3"');
  t.equal(renderTemplate('v: {{ .Values.nope | default .Chart.AppVersion }}', ctx), 'v: 9.0');
  t.equal(renderTemplate('v: {{ .Values.empty | default "d" | quote }}', ctx), 'v: "d"', 'empty string takes the default');
  t.equal(renderTemplate('v: {{ .Values.off | default true }}', ctx), 'v: true', 'false takes the default too (Sprig)');
  t.equal(renderTemplate('v: {{ $.Values.a.b }}', ctx), 'v: x');
  t.equal(renderTemplate('v: {{ printf "%s:%d" .Values.a.b .Values.a.n }}', ctx), 'v: x:3');
});

t.test('if / else if / else and trimming', async (t) => {
  t.equal(renderTemplate('a:\n{{- if .Values.on }}\n  b: 1\n{{- else }}\n  b: 2\n{{- end }}\n', ctx), 'a:\n  b: 1\n');
  t.equal(renderTemplate('a:\n{{- if .Values.a.m }}\n  b: 1\n{{- else }}\n  b: 2\n{{- end }}\n', ctx), 'a:\n  b: 2\n', 'an empty map is false');
  t.equal(renderTemplate('{{ if .Values.off }}1{{ else if .Values.a.l }}2{{ else }}3{{ end }}', ctx), '2');
  t.equal(renderTemplate('{{ if not .Values.off }}yes{{ end }}', ctx), 'yes');
  t.equal(renderTemplate('{{ if eq .Values.a.b "x" }}eq{{ end }}', ctx), 'eq');
  t.equal(renderTemplate('x  {{- /* note */ -}}  y', ctx), 'xy', 'a trimmed comment');
});

t.test('toYaml, nindent, with', async (t) => {
  t.equal(renderTemplate('l:\n  {{- toYaml .Values.a.l | nindent 2 }}', ctx), 'l:\n  - 1\n  - 2');
  t.equal(renderTemplate('m:\n  {{- toYaml .Values.a.map | nindent 2 }}', ctx), 'm:\n  k: v\n  z:\n    y: 1');
  t.equal(renderTemplate('{{- with .Values.a.map }}k: {{ .k }} ns: {{ $.Release.Namespace }}{{- end }}', ctx), 'k: v ns: ns', 'with rebinds the dot; $ stays the root');
  t.equal(renderTemplate('{{- with .Values.a.m }}set{{ else }}unset{{ end }}', ctx), 'unset');
});

t.test('define, include and template', async (t) => {
  t.equal(renderTemplate('labels:\n  {{- include "c.labels" . | nindent 2 }}', ctx, [HELPERS]), 'labels:\n  app: mychart\n  release: rel\n  chart: mychart-1.2.3_build.4');
  t.equal(renderTemplate('{{ include "c.name" .Values.a.map }}|{{ include "c.name" (dict "name" "given") }}', ctx, [HELPERS]), 'unnamed|given', 'include with another dot, and dict');
  t.equal(renderTemplate('{{ include "c.block" . }}', ctx, [HELPERS]), '\non: yes', 'the newline after {{- if }} stays, as in Go templates');
  t.equal(renderTemplate('x: {{ template "c.name" . }}', ctx, [HELPERS]), 'x: unnamed');
  t.equal(renderTemplate('n: {{ include "c.labels" . | quote }}', ctx, [HELPERS]).split('\n').length, 1, 'quote escapes the newlines (one line)');
});

t.test('what it does not do, it refuses', async (t) => {
  t.throws(() => renderTemplate('{{ include "missing" . }}', ctx), /no template "missing"/);
  t.throws(() => renderTemplate('{{ range .Values.a.l }}{{ end }}', ctx), /unsupported/);
  t.throws(() => renderTemplate('{{ $x := 1 }}', ctx), /unsupported/);
  t.throws(() => renderTemplate('{{ lookup "v1" "Secret" "ns" "x" }}', ctx), /unsupported template function lookup/);
  t.throws(() => renderTemplate('{{ .Values.a.map }}', ctx), /without toYaml/);
  t.throws(() => renderTemplate('{{ if .Values.on }}open', ctx), /without end/);
  t.throws(() => renderTemplate('{{ required "set a.q" .Values.a.q }}', ctx), /required: set a.q/);
});

t.test('a chart with helpers renders to YAML objects', async (t) => {
  const dir = t.testdir({
    'Chart.yaml': 'apiVersion: v2\nname: demo\nversion: 0.1.0\nappVersion: "2.0"\n',
    'values.yaml': 'replicas: 2\nextraLabels: { team: net }\nimage: { repository: r/demo }\n',
    templates: {
      '_helpers.tpl': '{{- define "demo.labels" -}}\napp.kubernetes.io/name: {{ .Chart.Name }}\n{{- with .Values.extraLabels }}\n{{ toYaml . }}\n{{- end }}\n{{- end }}\n',
      'deploy.yaml':
        'apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ .Release.Name }}-demo\n  labels:\n    {{- include "demo.labels" . | nindent 4 }}\nspec:\n  replicas: {{ .Values.replicas }}\n  template:\n    spec:\n      containers:\n        - name: c\n          image: "{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"\n',
      'NOTES.txt': 'Installed {{ .Release.Name }}.',
    },
  });
  const { objects, notes } = renderChart(dir, { replicas: 3 }, 'demo-ns', 'r1');
  t.same(objects, [
    {
      apiVersion: 'apps/v1',
      kind: 'Deployment',
      metadata: { name: 'r1-demo', labels: { 'app.kubernetes.io/name': 'demo', team: 'net' } },
      spec: { replicas: 3, template: { spec: { containers: [{ name: 'c', image: 'r/demo:2.0' }] } } },
    },
  ]);
  t.equal(notes, 'Installed r1.');
});
