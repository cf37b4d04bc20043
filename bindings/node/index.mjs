// ES module entry of lbmkv: the same objects as require('lbmkv').
import lbmkv from './index.js'

export const { Node, Table, Watch, version, setLogger } = lbmkv
export default lbmkv
