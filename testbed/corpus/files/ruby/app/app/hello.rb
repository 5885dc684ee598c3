# A few stdlib requires, then hello.
require 'json'
require 'set'
require 'time'
require 'securerandom'
require 'digest'
require 'erb'
puts "hello from ruby #{RUBY_VERSION} #{Digest::SHA256.hexdigest(JSON.generate({ 'a' => [1, 2] }))[0, 8]}"
