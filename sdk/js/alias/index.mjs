// The older package name: the very same module as import 'j1msky'.
export * from 'j1msky';
export { default } from 'j1msky';
