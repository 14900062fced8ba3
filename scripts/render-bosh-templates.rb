# Renders every template of every job of a BOSH release the way a director would, without one.
#
#   ruby scripts/render-bosh-templates.rb RELEASE_DIR FIXTURE.yml OUT_DIR
#
# FIXTURE lists cases; each renders one job with a manifest's `properties`, the `spec` of an
# instance and the links it consumes (named by the case that provides them):
#
#   cases:
#   - name: broker
#     job: wayback-broker
#     spec: {address: 10.0.0.5, name: broker, id: 0d6f…, index: 0, deployment: wayback}
#     properties: {broker: {password: secret}}
#     json_files: {catalog: catalog.json}     # property set from a JSON file (repo-relative)
#     links: {wayback-broker: broker}          # link name => providing case
#     instances:                               # as a link provider: its instances (default:
#     - {id: 3c1e…, address: 10.0.0.6, index: 0}  # one, the case's own spec)
#
# Each case's files land in OUT_DIR/CASE/<destination in the job's spec>, mirroring
# /var/vcap/jobs/JOB/. One line per file goes to stdout: CASE<TAB>JOB<TAB>PATH.
#
# The shim offers what bosh-template offers (p, if_p, link(..).p/.if_p/.address/.instances,
# each instance's id/address/index/name/az/bootstrap, if_link, spec.*) and is stricter than a
# director in one way on purpose: using a property the job's spec does not declare, or a link
# property the provider does not expose, is an error. Like a director, it refuses a provider
# that exposes a property which is neither set nor declared in its spec (e.g. a key inside an
# unset certificate-type property). A consumed link the fixture does not give is absent:
# if_link skips it, link() fails.
# Rendered .yml files must parse as YAML and .json files as JSON; every job of the release must
# be rendered by some case, and every file under a job's templates/ must be in its spec.
# Exit status: 0 all rendered, 1 a problem (named on stderr).

require 'erb'
require 'json'
require 'yaml'
require 'fileutils'
require 'ostruct'

class RenderError < StandardError; end

# Nested manifest properties plus the spec's defaults, read by dotted name.
class Properties
  def initialize(spec_properties, manifest)
    @declared = spec_properties || {}
    @manifest = manifest || {}
  end

  def declared?(name)
    @declared.key?(name)
  end

  # [found?, value]: the manifest's value, else the spec's default.
  def lookup(name)
    node = @manifest
    name.split('.').each do |part|
      unless node.is_a?(Hash) && node.key?(part)
        node = nil
        break
      end
      node = node[part]
    end
    return [true, node] unless node.nil?

    default = (@declared[name] || {})['default']
    [!default.nil?, default]
  end
end

# What `if_p` and `if_link` return: `.else { … }` runs only when the condition did not hold.
class ElseBlock
  def initialize(active)
    @active = active
  end

  def else
    yield if @active
  end
end

# The link a template receives: the providing job's exposed properties and its instances.
class Link
  attr_reader :instances

  def initialize(name, exposed, properties, instances)
    @name = name
    @exposed = exposed
    @properties = properties
    @instances = instances
  end

  def address
    @instances.first.address
  end

  def p(name, *default)
    check(name)
    found, value = @properties.lookup(name)
    return value if found
    return default.first unless default.empty?

    raise RenderError, "link #{@name}: property #{name} has no value and no default"
  end

  def if_p(*names)
    names.each { |n| check(n) }
    values = names.map { |n| @properties.lookup(n) }
    active = values.all? { |found, _| found }
    yield(*values.map(&:last)) if active
    ElseBlock.new(!active)
  end

  private

  def check(name)
    return if @exposed.include?(name)

    raise RenderError, "link #{@name}: property #{name} is not among the provider's exposed properties (#{@exposed.join(', ')})"
  end
end

# The object a template's ERB runs in.
class Context
  attr_reader :spec

  def initialize(job, properties, spec, links, consumes)
    @job = job
    @properties = properties
    @spec = spec
    @links = links
    @consumes = consumes
  end

  def p(*args)
    names = Array(args[0])
    names.each { |n| declared!(n) }
    names.each do |n|
      found, value = @properties.lookup(n)
      return value if found
    end
    return args[1] if args.length > 1

    raise RenderError, "job #{@job}: property #{names.join(' or ')} is not set and has no default"
  end

  def if_p(*names)
    names.each { |n| declared!(n) }
    values = names.map { |n| @properties.lookup(n) }
    active = values.all? { |found, _| found }
    yield(*values.map(&:last)) if active
    ElseBlock.new(!active)
  end

  def link(name)
    consumed!(name)
    @links.fetch(name) { raise RenderError, "job #{@job}: link #{name} is not provided in the fixture" }
  end

  def if_link(name)
    consumed!(name)
    yield(@links[name]) if @links.key?(name)
    ElseBlock.new(!@links.key?(name))
  end

  def render(text)
    ERB.new(text, trim_mode: '-').result(binding)
  end

  private

  def declared!(name)
    return if @properties.declared?(name)

    raise RenderError, "job #{@job}: property #{name} is used by a template but not declared in its spec"
  end

  def consumed!(name)
    return if @consumes.include?(name)

    raise RenderError, "job #{@job}: link #{name} is used by a template but not consumed in its spec"
  end
end

def instance_spec(job, fields)
  fields ||= {}
  OpenStruct.new(
    'name' => fields.fetch('name', job),
    'id' => fields.fetch('id', '6f1c9e2a-0000-4000-8000-000000000001'),
    'index' => fields.fetch('index', 0),
    'az' => fields.fetch('az', 'z1'),
    'address' => fields.fetch('address', '10.0.0.10'),
    'ip' => fields.fetch('ip', fields.fetch('address', '10.0.0.10')),
    'deployment' => fields.fetch('deployment', 'wayback'),
    'bootstrap' => fields.fetch('index', 0).zero?,
    'networks' => OpenStruct.new('default' => OpenStruct.new('ip' => fields.fetch('address', '10.0.0.10')))
  )
end

def main(release_dir, fixture_path, out_dir)
  repo_dir = File.expand_path('..', release_dir)
  fixture = YAML.safe_load(File.read(fixture_path), aliases: true)
  cases = fixture.fetch('cases')
  jobs = Dir.children(File.join(release_dir, 'jobs')).sort
  specs = jobs.to_h { |j| [j, YAML.safe_load(File.read(File.join(release_dir, 'jobs', j, 'spec')))] }

  jobs.each do |job|
    dir = File.join(release_dir, 'jobs', job)
    raise RenderError, "job #{job}: no monit file" unless File.file?(File.join(dir, 'monit'))

    listed = (specs[job]['templates'] || {}).keys.sort
    present = Dir.children(File.join(dir, 'templates')).sort
    raise RenderError, "job #{job}: templates/ holds #{(present - listed).join(', ')} not listed in its spec" unless (present - listed).empty?
    raise RenderError, "job #{job}: spec lists #{(listed - present).join(', ')} missing from templates/" unless (listed - present).empty?
    raise RenderError, "job #{job}: no fixture case renders it" unless cases.any? { |c| c['job'] == job }
  end

  by_name = cases.to_h { |c| [c.fetch('name'), c] }
  properties_of = lambda do |c|
    manifest = c['properties'] || {}
    (c['json_files'] || {}).each do |key, file|
      manifest = manifest.merge(key => JSON.parse(File.read(File.join(repo_dir, file))))
    end
    Properties.new(specs.fetch(c.fetch('job')) { raise RenderError, "case #{c['name']}: no job #{c['job']}" }['properties'], manifest)
  end

  cases.each do |c|
    job = c.fetch('job')
    spec = specs.fetch(job) { raise RenderError, "case #{c['name']}: no job #{job}" }
    links = (c['links'] || {}).to_h do |link_name, provider_case|
      provider = by_name.fetch(provider_case) { raise RenderError, "case #{c['name']}: no case #{provider_case}" }
      provides = (specs[provider['job']]['provides'] || []).find { |l| l['name'] == link_name }
      raise RenderError, "case #{c['name']}: job #{provider['job']} provides no link #{link_name}" unless provides

      exposed = provides['properties'] || []
      provider_properties = properties_of.call(provider)
      exposed.each do |name|
        found, = provider_properties.lookup(name)
        next if found || provider_properties.declared?(name)

        raise RenderError, "case #{c['name']}: link #{link_name} from case #{provider_case}: property #{name} is neither set nor declared in #{provider['job']}'s spec (a director refuses this)"
      end
      instances = (provider['instances'] || [provider['spec'] || {}]).map do |fields|
        instance_spec(provider['job'], (provider['spec'] || {}).merge(fields))
      end
      [link_name, Link.new(link_name, exposed, provider_properties, instances)]
    end
    consumes = (spec['consumes'] || []).map { |l| l['name'] }
    context = Context.new(job, properties_of.call(c), instance_spec(job, c['spec']), links, consumes)

    (spec['templates'] || {}).each do |source, dest|
      path = File.join(release_dir, 'jobs', job, 'templates', source)
      begin
        text = context.render(File.read(path))
      rescue RenderError
        raise
      rescue StandardError, ScriptError => e
        raise RenderError, "case #{c['name']}: #{job}/templates/#{source}: #{e.class}: #{e.message}"
      end
      begin
        YAML.safe_load(text) if dest.end_with?('.yml', '.yaml')
        JSON.parse(text) if dest.end_with?('.json')
      rescue StandardError => e
        raise RenderError, "case #{c['name']}: #{job}/templates/#{source} rendered an invalid #{File.extname(dest)}: #{e.message}"
      end
      target = File.join(out_dir, c['name'], dest)
      FileUtils.mkdir_p(File.dirname(target))
      File.write(target, text)
      puts [c['name'], job, target].join("\t")
    end
  end
end

if ARGV.length != 3
  warn 'usage: render-bosh-templates.rb RELEASE_DIR FIXTURE.yml OUT_DIR'
  exit 2
end
begin
  main(*ARGV)
rescue RenderError, KeyError, Errno::ENOENT, Psych::SyntaxError => e
  warn "render-bosh-templates: #{e.message}"
  exit 1
end
