// The older package name: the very same module as require('j1msky').
module.exports = require('j1msky');
